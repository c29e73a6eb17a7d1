// Operations (issue 10, points 12 and 14): the health route as a readiness probe, and what the logs tell an operator.
import t from 'tap'
import type { StreamsOptions } from '../lib/index.js'
import { RawClient, serve, until, type LogLine } from './helpers/app.js'
import { handshake } from './helpers/handshake.js'
import { startRedisServer } from './helpers/redis-server.js'

/** An app with the plugin whose log lines (debug and up) are collected. */
async function logged (options: StreamsOptions, setup?: Parameters<typeof serve>[1]) {
  const lines: LogLine[] = []
  const { app, url } = await serve(options, setup, lines)
  return { app, lines, url, http: url.replace('ws:', 'http:').slice(0, -1) }
}

t.test('health: off by default; health_path answers 200 with the adapter\'s state', async t => {
  const { app, url } = await serve({ health_path: '/healthz' })
  t.teardown(() => app.close())
  const base = url.replace('ws:', 'http:').slice(0, -1)
  const response = await fetch(`${base}/healthz`)
  t.equal(response.status, 200)
  t.same(await response.json(), { status: 'ok', adapter: 'memory', backend: 'ready', connections: 0 })

  const plain = await serve()
  t.teardown(() => plain.app.close())
  t.equal((await fetch(plain.url.replace('ws:', 'http:') + 'healthz')).status, 404, 'no route unless asked for')
})

t.test('health: 503 while the Redis backend is unreachable, 200 once it is back; lost and back are logged', async t => {
  const redis = await startRedisServer()
  t.teardown(() => redis.close())
  const { app, lines, http } = await logged({ health_path: '/health', adapter: { name: 'redis', config: { redis_url: redis.url, command_timeout_ms: 300 } } })
  t.teardown(() => app.close())
  t.equal((await fetch(`${http}/health`)).status, 200)

  await redis.stop()
  const down = await fetch(`${http}/health`)
  t.equal(down.status, 503)
  t.match(await down.json(), { status: 'unavailable', adapter: 'redis', backend: 'unreachable', code: 'STREAMS_ERR_BACKEND_UNAVAILABLE' })
  await t.rejects(app.streams.set('s', 'g', 'a', 1), { code: 'STREAMS_ERR_BACKEND_UNAVAILABLE' })
  t.ok(lines.some(line => line.level === 40 && line.msg === 'fastify-streams: backend lost' && line.adapter === 'redis'), 'the loss is logged at warn')

  await redis.restart()
  await until(async () => (await fetch(`${http}/health`)).status === 200, 'healthy again', 10_000)
  t.ok(lines.some(line => line.level === 30 && line.msg === 'fastify-streams: backend back'), 'the recovery is logged at info')
})

t.test('logs: connect, join, refusal with its reason and disconnect at debug, with the socket\'s id', async t => {
  const { app, lines, url } = await logged({ max_connections_per_ip: 1 }, app => {
    app.streams.registerFunction({ function_path: 'onJoin', handler: (input: { group_id: string }) => ({ unauthorized: input.group_id === 'no' }) })
    app.streams.registerTrigger({ trigger_type: 'stream:join', function_path: 'onJoin' })
  })
  t.teardown(() => app.close())
  const client = await RawClient.open(url)
  client.join('s', 'no')
  client.join('s', 'yes')
  await until(() => client.frames.length === 2, 'two answers')
  t.match(await handshake(url), { status: 429 })
  t.match(await handshake(url, { origin: 'https://evil.example' }), { status: 403 })
  await client.close()
  await until(() => lines.some(line => line.msg === 'fastify-streams: disconnect'), 'the disconnect line')

  const debug = lines.filter(line => line.level === 20)
  const connect = debug.find(line => line.msg === 'fastify-streams: connect')
  t.type(connect?.socket, 'number', 'connect names the socket')
  const id = connect!.socket
  t.ok(debug.some(line => line.msg === 'fastify-streams: join' && line.socket === id))
  t.ok(debug.some(line => line.msg === 'fastify-streams: join refused' && line.socket === id && line.reason === 'join_trigger'))
  t.ok(debug.some(line => line.msg === 'fastify-streams: handshake refused' && line.reason === 'limit_per_ip'))
  t.ok(debug.some(line => line.msg === 'fastify-streams: handshake refused' && line.reason === 'origin'))
  t.ok(debug.some(line => line.msg === 'fastify-streams: disconnect' && line.socket === id))
})

t.test('logs: an auth refusal is logged with reason auth', async t => {
  const { app, lines, url } = await logged({ auth_function: () => { throw new Error('no') } })
  t.teardown(() => app.close())
  t.match(await handshake(url), { status: 401 })
  t.ok(lines.some(line => line.level === 20 && line.msg === 'fastify-streams: handshake refused' && line.reason === 'auth'))
})
