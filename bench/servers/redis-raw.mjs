// The reference for the Redis write path: a raw ioredis loop of HSET + PUBLISH (the wire JSON), with a
// second connection subscribed to the channel, as a plugin node would be. No WebSocket clients.
import Redis from 'ioredis'
import { STREAM, ITEM_ID, makePayload, nowNs, startControl, announceReady, closedLoop } from '../lib/common.mjs'

const cfg = JSON.parse(process.env.BENCH_CONFIG || '{}')
const redis = new Redis(cfg.redisUrl, { lazyConnect: false })
const sub = new Redis(cfg.redisUrl)
let received = 0
await sub.subscribe('stream::events')
sub.on('messageBuffer', () => { received++ })

const handlers = {
  writes: async ({ durationMs, concurrency, groups, prefix = 'w' }) => {
    const keys = []
    for (let g = 0; g < groups; g++) keys.push(`stream:${STREAM}:${prefix}${g}`)
    const r0 = received
    const out = await closedLoop({
      durationMs,
      concurrency,
      fn: (i) => {
        const g = i % groups
        const value = makePayload(i, nowNs())
        const json = JSON.stringify({ type: 'stream', timestamp: Date.now(), streamName: STREAM, groupId: prefix + g, id: ITEM_ID, event: { type: 'update', data: value } })
        return Promise.all([redis.hset(keys[g], ITEM_ID, JSON.stringify(value)), redis.publish('stream::events', json)])
      }
    })
    return { ...out, pubsubReceived: received - r0 }
  }
}

const info = { system: 'redis-raw', protocol: 'none' }
const ctl = await startControl(handlers, info)
announceReady({ ...info, ctlPort: ctl.address().port }, () => { redis.disconnect(); sub.disconnect() })
