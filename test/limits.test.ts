// Limits and protection (issue 10, points 4-11): what one client can no longer do to the server and to others.
import t, { type Test } from 'tap'
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import { WebSocket } from 'ws'
import streams from '../lib/index.js'
import { effectiveMaxConnections } from '../lib/limits.js'
import { MAX_SERVABLE_VALUE_DEPTH } from '../lib/values.js'
import {
  DEFAULT_AUTH_TIMEOUT_MS, DEFAULT_FRAME_BURST, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP, DEFAULT_MAX_FRAME_RATE,
  DEFAULT_MAX_UPDATE_OPS, DEFAULT_MAX_VALUE_BYTES, DEFAULT_MAX_VALUE_DEPTH, DEFAULT_PING_INTERVAL_MS, DEFAULT_SYNC_DRAIN_TIMEOUT_MS, FD_RESERVE,
  normalizeOptions
} from '../lib/options.js'
import { RawClient, serve, until } from './helpers/app.js'
import { handshake, type Handshake } from './helpers/handshake.js'
import { startRedisServer } from './helpers/redis-server.js'

function opened (t: Test, result: Handshake): WebSocket {
  t.equal(result.status, 101, 'the handshake succeeds')
  const socket = (result as { socket: WebSocket }).socket
  t.teardown(() => socket.terminate())
  return socket
}

t.test('connection limits: max_connections answers 503 before the upgrade, HTTP routes still answer, a closed socket frees its place', async t => {
  const { app, url } = await serve({ max_connections: 2 }, app => { app.get('/ping', async () => ({ pong: true })) })
  t.teardown(() => app.close())
  const first = opened(t, await handshake(url))
  opened(t, await handshake(url))
  t.same(await handshake(url), { status: 503, code: 'STREAMS_ERR_TOO_MANY_CONNECTIONS' })
  const http = await fetch(url.replace('ws:', 'http:') + 'ping')
  t.equal(http.status, 200, 'the app still answers HTTP')
  first.close()
  await until(async () => (await handshake(url)).status === 101, 'a place once a socket closed')
})

t.test('connection limits: max_connections_per_ip answers 429', async t => {
  const { app, url } = await serve({ max_connections_per_ip: 1 })
  t.teardown(() => app.close())
  opened(t, await handshake(url))
  t.same(await handshake(url), { status: 429, code: 'STREAMS_ERR_TOO_MANY_CONNECTIONS' })
})

t.test('connection limits: max_connections keeps a reserve of file descriptors', async t => {
  t.equal(effectiveMaxConnections(100_000, 20_000), 20_000 - FD_RESERVE, 'lowered under the open-file limit')
  t.equal(effectiveMaxConnections(1000, 20_000), 1000, 'kept when it fits')
  t.equal(effectiveMaxConnections(1000, null), 1000, 'kept when the limit is unknown')
})

t.test('origin check: same origin by default, no Origin accepted, others 403 before the upgrade', async t => {
  const { app, url } = await serve()
  t.teardown(() => app.close())
  const host = new URL(url).host
  opened(t, await handshake(url))
  opened(t, await handshake(url, { origin: `http://${host}` }))
  t.same(await handshake(url, { origin: 'https://evil.example' }), { status: 403, code: 'STREAMS_ERR_ORIGIN' })
  t.same(await handshake(url, { origin: 'null' }), { status: 403, code: 'STREAMS_ERR_ORIGIN' })
})

t.test('origin check: allowed_origins lists exact origins, or * for any', async t => {
  const listed = await serve({ allowed_origins: ['https://app.example'] })
  t.teardown(() => listed.app.close())
  opened(t, await handshake(listed.url, { origin: 'https://app.example' }))
  t.same(await handshake(listed.url, { origin: `http://${new URL(listed.url).host}` }), { status: 403, code: 'STREAMS_ERR_ORIGIN' }, 'the own host is not implied')
  const any = await serve({ allowedOrigins: '*' })
  t.teardown(() => any.app.close())
  opened(t, await handshake(any.url, { origin: 'https://anywhere.example' }))
  await t.rejects(serve({ allowed_origins: ['app.example'] }), { code: 'STREAMS_ERR_INVALID_OPTION' })
})

t.test('auth timeout: an auth function that never settles is refused with 503 past auth_timeout_ms', async t => {
  const { app, url } = await serve({ auth_timeout_ms: 100, auth_function: () => new Promise(() => {}) })
  t.teardown(() => app.close())
  t.same(await handshake(url), { status: 503, code: 'STREAMS_ERR_AUTH_TIMEOUT' })
})

t.test('auth timeout: a client that goes away during auth releases its place at once', async t => {
  let calls = 0
  const { app, url } = await serve({
    max_connections: 1,
    auth_timeout_ms: 60_000,
    // The first handshake hangs in auth; later ones pass.
    auth_function: () => ++calls === 1 ? new Promise(() => {}) : { context: null }
  })
  t.teardown(() => app.close())
  const hanging = new WebSocket(url)
  hanging.on('error', () => {})
  await until(() => calls === 1, 'the first auth call')
  t.same(await handshake(url), { status: 503, code: 'STREAMS_ERR_TOO_MANY_CONNECTIONS' }, 'the hanging handshake holds the only place')
  hanging.terminate()
  await until(async () => (await handshake(url)).status === 101, 'the place released')
})

t.test('frame rate and leave frames: a flood of join/leave frames is closed with 1008, runs no leave trigger, and others keep their events', async t => {
  let leaveTriggers = 0
  const { app, url } = await serve({ max_frame_rate: 50, frame_burst: 100 }, app => {
    app.streams.registerFunction({ function_path: 'onLeave', handler: () => { leaveTriggers++ } })
    app.streams.registerTrigger({ trigger_type: 'stream:leave', function_path: 'onLeave' })
  })
  t.teardown(() => app.close())
  const bystander = await RawClient.open(url)
  t.teardown(() => bystander.close())
  bystander.join('s', 'g')
  await until(() => bystander.of('sync').length === 1, 'the bystander sync')

  const flooder = await RawClient.open(url)
  for (let i = 0; i < 2000; i++) flooder.leave('s', 'g', `never-${i}`)
  await until(() => flooder.closeCode !== null, 'the flooder closed')
  t.equal(flooder.closeCode, 1008)
  t.equal(leaveTriggers, 0, 'no leave trigger for ids the socket never joined')

  await app.streams.set('s', 'g', 'a', { n: 1 })
  await until(() => bystander.of('create').length === 1, 'the bystander event')
  t.equal(app.streams.connectionCount, 1)
})

t.test('heartbeat: a socket that misses its pong is closed and its leave triggers run; one that answers stays', async t => {
  const leaves: string[] = []
  const { app, url } = await serve({ ping_interval_ms: 50 }, app => {
    app.streams.registerFunction({ function_path: 'onLeave', handler: (input: { subscription_id: string }) => { leaves.push(input.subscription_id) } })
    app.streams.registerTrigger({ trigger_type: 'stream:leave', function_path: 'onLeave' })
  })
  t.teardown(() => app.close())
  const alive = await RawClient.open(url)
  t.teardown(() => alive.close())
  let pings = 0
  alive.socket.on('ping', () => { pings++ })
  // A frozen peer: the socket stays open but never answers a ping.
  const frozen = new WebSocket(url, { autoPong: false })
  frozen.on('error', () => {})
  await new Promise(resolve => frozen.once('open', resolve))
  frozen.send(JSON.stringify({ type: 'join', data: { subscriptionId: 'frozen-sub', streamName: 's', groupId: 'quiet' } }))
  await until(() => leaves.includes('frozen-sub'), 'the frozen socket\'s leave trigger')
  await until(() => frozen.readyState === WebSocket.CLOSED, 'the frozen socket closed')
  t.ok(pings >= 2, 'the live socket was pinged and answered')
  t.equal(alive.socket.readyState, WebSocket.OPEN, 'the live socket stays')
  t.equal(app.streams.connectionCount, 1)
})

t.test('deep or huge values: refused at set, update and send with STREAMS_ERR_INVALID_ARGUMENT; reads keep working', async t => {
  const { app } = await serve({ max_value_depth: 4, max_value_bytes: 1000, max_update_ops: 10 })
  t.teardown(() => app.close())
  let deep: unknown = 1
  for (let i = 0; i < 10_000; i++) deep = [deep]
  await t.rejects(app.streams.set('s', 'g', 'deep', deep), { code: 'STREAMS_ERR_INVALID_ARGUMENT' })
  await t.rejects(app.streams.set('s', 'g', 'big', { text: 'x'.repeat(2000) }), { code: 'STREAMS_ERR_INVALID_ARGUMENT' })
  await app.streams.set('s', 'g', 'ok', { a: [[[1]]] })
  // A deep `set` op, and an update whose result is too deep though each op is not.
  await t.rejects(app.streams.update('s', 'g', 'ok', [{ type: 'set', path: 'b', value: deep }]), { code: 'STREAMS_ERR_INVALID_ARGUMENT' })
  await t.rejects(app.streams.update('s', 'g', 'ok', [{ type: 'set', path: 'b', value: [[[[1]]]] }]), { code: 'STREAMS_ERR_INVALID_ARGUMENT' })
  await t.rejects(app.streams.send('s', 'g', { type: 'boom', data: deep }), { code: 'STREAMS_ERR_INVALID_ARGUMENT' })
  await t.rejects(app.streams.send('s', 'g', { type: 'boom', data: 'x'.repeat(2000) }), { code: 'STREAMS_ERR_INVALID_ARGUMENT' })
  t.same(await app.streams.getGroup('s', 'g'), [{ a: [[[1]]], id: 'ok' }], 'only the accepted value is stored, and reads answer')
})

t.test('update op count: an update past max_update_ops is refused (default 1000)', async t => {
  const { app } = await serve()
  t.teardown(() => app.close())
  const ops = Array.from({ length: 10_000 }, () => ({ type: 'increment' as const, path: 'n', by: 1 }))
  await t.rejects(app.streams.update('s', 'g', 'a', ops), { code: 'STREAMS_ERR_INVALID_ARGUMENT' })
  const result = await app.streams.update('s', 'g', 'a', ops.slice(0, 1000))
  t.equal((result.new_value as { n: number }).n, 1000)
})

t.test('names that collide: ill-formed UTF-16 names are refused everywhere', async t => {
  const { app, url } = await serve()
  t.teardown(() => app.close())
  for (const [stream, group, id] of [['s\uD800', 'g', 'a'], ['s', 'g\uDC00x', 'a'], ['s', 'g', '\uD83D']]) {
    await t.rejects(app.streams.set(stream, group, id, 1), { code: 'STREAMS_ERR_INVALID_NAME' })
  }
  await t.rejects(app.streams.call('stream::get', { stream_name: 's', group_id: 'g\uD800', item_id: 'a' }), { code: 'STREAMS_ERR_INVALID_NAME' })
  t.resolves(app.streams.set('s', 'g', '\uD83D\uDE00', 1), 'a well-formed pair is a valid name')
  const client = await RawClient.open(url)
  t.teardown(() => client.close())
  client.join('s', 'g\uD800')
  client.join('s', 'g')
  await until(() => client.of('sync').length === 1, 'the well-formed join\'s sync')
  t.same(client.of('sync').map(frame => frame.groupId), ['g'], 'the ill-formed join got no sync')
  t.same(client.of('event').map(frame => frame.event.event?.data.code), ['STREAMS_ERR_INVALID_NAME'], 'it was told why')
})

t.test('names that collide: on Redis a lone surrogate cannot alias U+FFFD (refused before it reaches a key)', async t => {
  const redis = await startRedisServer()
  t.teardown(() => redis.close())
  const { app } = await serve({ adapter: { name: 'redis', config: { redis_url: redis.url } } })
  t.teardown(() => app.close())
  await app.streams.set('s', 'g\uFFFD', 'a', 'replacement character')
  await t.rejects(app.streams.set('s', 'g\uD800', 'a', 'lone surrogate'), { code: 'STREAMS_ERR_INVALID_NAME' })
  await t.rejects(app.streams.set('s', 'g', '\uDC00', 'lone surrogate'), { code: 'STREAMS_ERR_INVALID_NAME' })
  t.equal(await app.streams.get('s', 'g\uFFFD', 'a'), 'replacement character', 'the first write was not overwritten')
})

t.test('names that collide: NUL in names does not merge hub rooms', async t => {
  const { app, url } = await serve()
  t.teardown(() => app.close())
  const client = await RawClient.open(url)
  t.teardown(() => client.close())
  client.join('a\u0000b', 'c')
  await until(() => client.of('sync').length === 1, 'the sync')
  await app.streams.set('a', 'b\u0000c', 'other', 1)
  await app.streams.set('a\u0000b', 'c', 'mine', 2)
  await until(() => client.of('create').length >= 1, 'the own event')
  t.same(client.of('create').map(frame => frame.id), ['mine'], 'only the own room\'s event')
})

t.test('max_payload is enforced from the frame header when the app registered @fastify/websocket itself', async t => {
  const app = Fastify()
  await app.register(websocket, { options: { maxPayload: 100 * 1024 * 1024 } })
  await app.register(streams, { max_payload: 1024 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const { port } = app.server.address() as { port: number }
  const client = await RawClient.open(`ws://127.0.0.1:${port}/`)
  // Only the header of a masked 1 MiB text frame: the server must refuse it without waiting for the payload.
  const header = Buffer.alloc(14)
  header[0] = 0x81
  header[1] = 0x80 | 127
  header.writeUInt32BE(1024 * 1024, 6)
  ;(client.socket as unknown as { _socket: import('node:net').Socket })._socket.write(header)
  await until(() => client.closeCode !== null, 'the close')
  t.equal(client.closeCode, 1009)
})

t.test('key_prefix: a prefix holding "stream:" is refused (it would list another adapter\'s keys)', async t => {
  await t.rejects(serve({ adapter: { name: 'redis', config: { key_prefix: 'app:stream:' } } }), { code: 'STREAMS_ERR_INVALID_OPTION' })
})

t.test('the new options: snake_case and camelCase, named defaults, bad values refused with STREAMS_ERR_INVALID_OPTION', async t => {
  const defaults = normalizeOptions({})
  t.same(defaults.limits, {
    maxConnections: DEFAULT_MAX_CONNECTIONS,
    maxConnectionsPerIp: DEFAULT_MAX_CONNECTIONS_PER_IP,
    allowedOrigins: null,
    authTimeoutMs: DEFAULT_AUTH_TIMEOUT_MS,
    maxFrameRate: DEFAULT_MAX_FRAME_RATE,
    frameBurst: DEFAULT_FRAME_BURST,
    pingIntervalMs: DEFAULT_PING_INTERVAL_MS,
    maxValueDepth: DEFAULT_MAX_VALUE_DEPTH,
    maxValueBytes: DEFAULT_MAX_VALUE_BYTES,
    maxUpdateOps: DEFAULT_MAX_UPDATE_OPS,
    syncDrainTimeoutMs: DEFAULT_SYNC_DRAIN_TIMEOUT_MS
  })
  t.same(defaults.operations, { healthPath: null, metricsPath: null, metricsRegistry: null })
  const numeric = ['max_connections', 'max_connections_per_ip', 'auth_timeout_ms', 'max_frame_rate', 'frame_burst', 'max_value_depth', 'max_value_bytes', 'max_update_ops', 'sync_drain_timeout_ms']
  for (const snake of numeric) {
    const camel = snake.replace(/_([a-z])/g, (_, letter: string) => letter.toUpperCase())
    t.equal((normalizeOptions({ [snake]: 7 }).limits as unknown as Record<string, number>)[camel], 7, `${snake} read`)
    t.equal((normalizeOptions({ [camel]: 7 }).limits as unknown as Record<string, number>)[camel], 7, `${camel} read`)
    for (const bad of [0, -1, 1.5, '7']) t.throws(() => normalizeOptions({ [snake]: bad }), { code: 'STREAMS_ERR_INVALID_OPTION' }, `${snake}: ${bad} refused`)
  }
  t.equal(normalizeOptions({ max_value_depth: MAX_SERVABLE_VALUE_DEPTH }).limits.maxValueDepth, MAX_SERVABLE_VALUE_DEPTH)
  t.throws(() => normalizeOptions({ max_value_depth: MAX_SERVABLE_VALUE_DEPTH + 1 }), { code: 'STREAMS_ERR_INVALID_OPTION' }, 'no deeper than a reader can serve')
  t.equal(normalizeOptions({ ping_interval_ms: 0 }).limits.pingIntervalMs, 0, 'the heartbeat can be turned off')
  t.throws(() => normalizeOptions({ ping_interval_ms: -1 }), { code: 'STREAMS_ERR_INVALID_OPTION' })
  t.same(normalizeOptions({ allowed_origins: ['https://App.example:8443'] }).limits.allowedOrigins, ['https://app.example:8443'])
  for (const bad of ['https://a.example', ['https://a.example/path'], [42]]) t.throws(() => normalizeOptions({ allowedOrigins: bad }), { code: 'STREAMS_ERR_INVALID_OPTION' })
  t.same(normalizeOptions({ health_path: '/health', metricsPath: '/metrics' }).operations, { healthPath: '/health', metricsPath: '/metrics', metricsRegistry: null })
  for (const bad of [{ health_path: 'health' }, { health_path: '/' }, { metrics_path: '/x', health_path: '/x' }, { metrics_registry: {} }]) {
    t.throws(() => normalizeOptions(bad), { code: 'STREAMS_ERR_INVALID_OPTION' })
  }
})
