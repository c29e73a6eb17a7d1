// The official Durable Streams conformance suite against durable streams in the RedisAdapter's Redis
// (a real redis-server on a free port).
import { startRedisServer } from '../helpers/redis-server.js'
import { conformance } from './conformance/run.js'

const redis = await startRedisServer()
try {
  await conformance('Redis', { adapter: { class: 'modules::streams::adapters::RedisAdapter', config: { redis_url: redis.url } } })
} finally {
  await redis.close()
}
