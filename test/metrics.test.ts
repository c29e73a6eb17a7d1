// Operations (issue 10, point 13): Prometheus metrics on the app's registry or on `metrics_path`.
import t from 'tap'
import { Registry } from 'prom-client'
import { WebSocket } from 'ws'
import { RawClient, serve, until } from './helpers/app.js'
import { handshake } from './helpers/handshake.js'
import { startRedisServer } from './helpers/redis-server.js'

/** The value of one sample of the exposition text (0 when absent). */
function sample (text: string, name: string, labels = ''): number {
  const line = text.split('\n').find(row => row.startsWith(labels === '' ? `${name} ` : `${name}{${labels}} `))
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1))
}

function nested (depth: number): unknown {
  let value: unknown = 1
  for (let i = 0; i < depth; i++) value = [value]
  return value
}

t.test('metrics: off by default; metrics_path exposes sockets, subscriptions, joins, leaves, refusals, frames, syncs and writes', async t => {
  const plain = await serve()
  t.teardown(() => plain.app.close())
  t.equal((await fetch(plain.url.replace('ws:', 'http:') + 'metrics')).status, 404, 'no route unless asked for')

  const { app, url } = await serve({ metrics_path: '/metrics', allowed_origins: ['https://app.example'] })
  t.teardown(() => app.close())
  const scrape = async (): Promise<string> => (await fetch(url.replace('ws:', 'http:') + 'metrics')).text()
  const client = await RawClient.open(url)
  t.teardown(() => client.close())
  const a = client.join('s', 'g')
  client.join('s', 'h')
  await until(() => client.of('sync').length === 2, 'two syncs')
  await app.streams.set('s', 'g', 'x', { n: 1 })
  await t.rejects(app.streams.set('s', 'g', 'y', { d: nested(100) }), { code: 'STREAMS_ERR_INVALID_ARGUMENT' })
  await until(() => client.of('create').length === 1, 'the event')
  client.leave('s', 'g', a)
  t.match(await handshake(url, { origin: 'https://evil.example' }), { status: 403 })
  await until(async () => sample(await scrape(), 'fastify_streams_leaves_total') === 1, 'the leave counted')

  const text = await scrape()
  t.equal(sample(text, 'fastify_streams_open_sockets'), 1)
  t.equal(sample(text, 'fastify_streams_subscriptions'), 1)
  t.equal(sample(text, 'fastify_streams_joins_total'), 2)
  t.equal(sample(text, 'fastify_streams_refusals_total', 'reason="origin"'), 1)
  t.equal(sample(text, 'fastify_streams_frames_in_total'), 3)
  t.equal(sample(text, 'fastify_streams_frames_out_total'), 3)
  t.ok(sample(text, 'fastify_streams_bytes_out_total') > 0)
  t.equal(sample(text, 'fastify_streams_sync_bytes_count'), 2)
  t.equal(sample(text, 'fastify_streams_sync_duration_seconds_count'), 2)
  t.equal(sample(text, 'fastify_streams_write_ops_total', 'adapter="memory",op="set",outcome="ok"'), 1)
  t.equal(sample(text, 'fastify_streams_write_ops_total', 'adapter="memory",op="set",outcome="STREAMS_ERR_INVALID_ARGUMENT"'), 0, 'a refused value never reaches the adapter')
})

t.test('metrics: on a registry the app passes, with slow-consumer closes by code', async t => {
  const registry = new Registry()
  const { app, url } = await serve({ metrics_registry: registry, max_buffered_bytes: 64 * 1024 })
  t.teardown(() => app.close())
  const slow = new WebSocket(url)
  await new Promise(resolve => slow.once('open', resolve))
  slow.send(JSON.stringify({ type: 'join', data: { streamName: 's', groupId: 'g', subscriptionId: '1' } }))
  await until(async () => (await registry.getSingleMetricAsString('fastify_streams_joins_total')).endsWith(' 1'), 'the join')
  // A reader that stops reading: the server's send buffer grows past the cap.
  ;(slow as unknown as { _socket: { pause(): void } })._socket.pause()
  const big = 'x'.repeat(16 * 1024)
  for (let i = 0; i < 400 && app.streams.connectionCount === 1; i++) {
    await app.streams.set('s', 'g', 'blob', { big, i })
    if (i % 20 === 0) await new Promise(resolve => setTimeout(resolve, 5))
  }
  await until(() => app.streams.connectionCount === 0, 'the slow socket dropped')
  slow.terminate()
  const text = await registry.metrics()
  t.equal(sample(text, 'fastify_streams_slow_consumer_closes_total', 'code="1013"'), 1)
  t.equal(sample(text, 'fastify_streams_open_sockets'), 0)
})

t.test('metrics: backend reconnects and failed writes on Redis', async t => {
  const redis = await startRedisServer()
  t.teardown(() => redis.close())
  const registry = new Registry()
  const { app } = await serve({ metrics_registry: registry, adapter: { name: 'redis', config: { redis_url: redis.url, command_timeout_ms: 300 } } })
  t.teardown(() => app.close())
  await app.streams.set('s', 'g', 'a', 1)
  await redis.stop()
  await t.rejects(app.streams.set('s', 'g', 'a', 2), { code: 'STREAMS_ERR_BACKEND_UNAVAILABLE' })
  await redis.restart()
  await until(async () => sample(await registry.metrics(), 'fastify_streams_backend_reconnects_total') === 1, 'the reconnect counted', 10_000)
  const text = await registry.metrics()
  t.equal(sample(text, 'fastify_streams_write_ops_total', 'adapter="redis",op="set",outcome="ok"'), 1)
  t.equal(sample(text, 'fastify_streams_write_ops_total', 'adapter="redis",op="set",outcome="STREAMS_ERR_BACKEND_UNAVAILABLE"'), 1)
})

t.test('metrics: a metrics_registry that is not a registry is refused', async t => {
  await t.rejects(serve({ metrics_registry: {} }), { code: 'STREAMS_ERR_INVALID_OPTION' })
})
