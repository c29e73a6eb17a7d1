// RedisAdapter against a real redis-server started for this file (never the one at 6379).
import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { RedisAdapter, escapeGlob, parseEnvelope } from '../../lib/adapters/redis.js'
import { normalizeRedisConfig } from '../../lib/adapters/redis-config.js'
import type { StreamEvent } from '../../lib/adapters/adapter.js'
import { keyCount, startRedisServer, replyText, type RedisServer } from '../helpers/redis-server.js'
import { until } from '../helpers/app.js'
import { waitFor } from '../helpers/wait.js'
import { adapterContract } from './contract.js'

/** A RedisAdapter from a config as a user writes it, checked the way the plugin checks it. */
const createRedisAdapter = (config: Record<string, unknown>) => new RedisAdapter(normalizeRedisConfig(config))
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

function feed (adapter: RedisAdapter): StreamEvent[] {
  const events: StreamEvent[] = []
  adapter.subscribe((event) => { events.push(event) })
  return events
}

async function commandCount (server: RedisServer, name: string): Promise<number> {
  const info = replyText(await server.command('INFO', 'commandstats'))
  const match = new RegExp(`^cmdstat_${name}:calls=(\\d+)`, 'm').exec(info)
  return match ? Number(match[1]) : 0
}

const server = await startRedisServer()
t.teardown(() => server.close())

// Every adapter and raw client a test opens is closed by the test itself; these track them.
async function open (t: Test, config: Record<string, unknown> = {}): Promise<RedisAdapter> {
  const adapter = createRedisAdapter({ redis_url: server.url, ...config })
  t.teardown(() => adapter.close())
  await adapter.start()
  return adapter
}

function raw (t: Test, url = server.url): Redis {
  const client = new Redis(url, { maxRetriesPerRequest: 1, retryStrategy: () => 100 })
  client.on('error', () => {})
  t.teardown(() => { client.disconnect() })
  return client
}

t.beforeEach(async () => { await server.command('FLUSHALL') })

// The shared contract, each adapter under its own key prefix on the shared server.
let contractRun = 0
t.test('contract', async (t) => {
  adapterContract(t, async (options = {}) => {
    const prefix = `contract${++contractRun}:`
    const config = {
      redis_url: server.url,
      key_prefix: prefix,
      ...options.changeLog && { change_log: { max_changes: options.changeLog.maxChanges, max_age_ms: options.changeLog.maxAgeMs } }
    }
    const restart = async () => {
      // Saved first: this Redis keeps its data across the restart, as a persistent one does.
      await server.command('SAVE')
      await server.restart()
      return createRedisAdapter(config)
    }
    return { adapter: createRedisAdapter(config), restart, durable: true, footprint: async () => await keyCount(server, prefix) }
  })
})

t.test('helpers', async (t) => {
  t.equal(escapeGlob('a*b?c[d]e\\f'), 'a\\*b\\?c\\[d\\]e\\\\f')
  t.equal(parseEnvelope('nope'), null)
  t.equal(parseEnvelope('[1]'), null)
  t.equal(parseEnvelope('{"type":"stream","timestamp":1,"streamName":"s","groupId":"g","id":null,"event":{"type":"sync","data":[]}}'), null)
  t.same(parseEnvelope('{"type":"stream","timestamp":5,"streamName":"s","groupId":"g","id":"i","event":{"type":"update","data":{"a":1}}}'),
    { stream: 's', group: 'g', id: 'i', rev: 0, timestamp: 5, event: { type: 'update', data: { a: 1 } } }, 'engine messages without rev parse with rev 0')
})

t.test('set, get, delete and their events', async (t) => {
  const adapter = await open(t)
  const events = feed(adapter)
  t.same(await adapter.get('todo', 'inbox', 't1'), null)
  t.match(await adapter.set('todo', 'inbox', 't1', { id: 't1', n: 1 }), { old_value: null, new_value: { id: 't1', n: 1 } })
  t.same(await adapter.get('todo', 'inbox', 't1'), { id: 't1', n: 1 })
  t.match(await adapter.set('todo', 'inbox', 't1', { id: 't1', n: 2 }), { old_value: { id: 't1', n: 1 }, new_value: { id: 't1', n: 2 } })
  t.match(await adapter.delete('todo', 'inbox', 'nope'), { old_value: null }, 'delete of a missing item')
  t.match(await adapter.delete('todo', 'inbox', 't1'), { old_value: { id: 't1', n: 2 } })
  t.same(await adapter.get('todo', 'inbox', 't1'), null)
  t.match(await adapter.set('todo', 'inbox', 'scalar', 42), { old_value: null, new_value: 42 })
  t.same(await adapter.get('todo', 'inbox', 'scalar'), 42)
  await waitFor(() => events.length >= 4, '4 events')
  await sleep(50)
  t.same(events.map((e) => [e.event.type, e.id, e.rev, (e.event as { data: unknown }).data]), [
    ['create', 't1', 1, { id: 't1', n: 1 }],
    ['update', 't1', 2, { id: 't1', n: 2 }],
    ['delete', 't1', 3, { id: 't1', n: 2 }],
    ['create', 'scalar', 4, 42]
  ], 'create/update/delete in order, nothing for the missing delete')
  t.ok(events.every((e) => e.stream === 'todo' && e.group === 'inbox'))
  await t.rejects(adapter.set('todo', 'inbox', 'x', undefined), { code: 'STREAMS_ERR_INVALID_ARGUMENT' })
  const cyclic: Record<string, unknown> = {}
  cyclic.self = cyclic
  await t.rejects(adapter.set('todo', 'inbox', 'x', cyclic), { code: 'STREAMS_ERR_INVALID_ARGUMENT' })
})

t.test('engine-compatible layout and exact wire envelope on stream::events', async (t) => {
  const adapter = await open(t)
  const client = raw(t)
  const sub = raw(t)
  const messages: string[] = []
  sub.on('message', (channel: string, message: string) => { if (channel === 'stream::events') messages.push(message) })
  await sub.subscribe('stream::events')
  await adapter.set('todo', 'in:box', 't"1', { id: 't"1', big: 2 ** 70, f: 1.5, nested: { z: 1, a: [2] } })
  await adapter.delete('todo', 'in:box', 't"1')
  await adapter.publish('todo', 'in:box', null, { type: 'event', event: { type: 'typing', data: { user: 'ana' } } })
  await adapter.publish('todo', 'in:box', 'i1', { type: 'event', event: { type: 'ping', data: undefined } })
  await waitFor(() => messages.length >= 4, '4 messages')
  const stored = JSON.stringify({ id: 't"1', big: 2 ** 70, f: 1.5, nested: { z: 1, a: [2] } })
  const parsed = messages.map((m) => JSON.parse(m))
  const ts = parsed.map((m) => m.timestamp as number)
  t.equal(messages[0], `{"type":"stream","timestamp":${ts[0]},"streamName":"todo","groupId":"in:box","id":"t\\"1","event":{"type":"create","data":${stored}},"rev":1}`)
  t.equal(messages[1], `{"type":"stream","timestamp":${ts[1]},"streamName":"todo","groupId":"in:box","id":"t\\"1","event":{"type":"delete","data":${stored}},"rev":2}`)
  t.equal(messages[2], `{"type":"stream","timestamp":${ts[2]},"streamName":"todo","groupId":"in:box","id":null,"event":{"type":"event","event":{"type":"typing","data":{"user":"ana"}}},"rev":3}`)
  t.equal(messages[3], `{"type":"stream","timestamp":${ts[3]},"streamName":"todo","groupId":"in:box","id":"i1","event":{"type":"event","event":{"type":"ping","data":null}},"rev":4}`)
  t.ok(ts[0] < ts[1] && ts[1] < ts[2] && ts[2] < ts[3], 'timestamps strictly increase, custom events included')
  t.ok(Math.abs(ts[0] - Date.now()) < 60_000, 'timestamps are epoch ms')

  await adapter.set('todo', 'in:box', 'a', { id: 'a' })
  t.same(await client.hgetall('stream:todo:in:box'), { a: '{"id":"a"}' }, 'the group hash holds items only, as JSON text')
  t.same(await client.hgetall('stream-meta:todo:in:box'), { rev: '5', ts: String((await adapter.snapshotGroup('todo', 'in:box')).timestamp) })
  t.same((await client.keys('stream:*')).sort(), ['stream:todo:in:box'], 'nothing else matches stream:*')

  // an engine writing the same hash directly is read back
  await client.hset('stream:todo:in:box', 'engine', '{"id":"engine","x":1}')
  t.same(await adapter.get('todo', 'in:box', 'engine'), { id: 'engine', x: 1 })
  t.match(await adapter.set('todo', 'in:box', 'engine', { id: 'engine', x: 2 }), { old_value: { id: 'engine', x: 1 }, new_value: { id: 'engine', x: 2 } })
  await client.hset('stream:todo:in:box', 'bad', 'not json')
  const skipped = adapter.skippedItems
  t.equal(await adapter.get('todo', 'in:box', 'bad'), null, 'unparsable stored JSON reads as absent: reads never throw on stored data')
  t.equal(adapter.skippedItems, skipped + 1, 'and is counted')
})

t.test('getGroup keeps first-insert order; snapshots read rev and ts', async (t) => {
  const adapter = await open(t)
  const client = raw(t)
  t.same(await adapter.getGroup('s', 'g'), [])
  t.match(await adapter.snapshotGroup('s', 'g'), { items: [], ids: [], rev: 0, timestamp: 0 })
  t.same(await adapter.snapshotItem('s', 'g', 'x'), { value: null, rev: 0, timestamp: 0 })
  for (const id of ['c', 'a', 'b', 'd']) await adapter.set('s', 'g', id, { id })
  await adapter.set('s', 'g', 'a', { id: 'a', v: 2 })
  await adapter.delete('s', 'g', 'b')
  await adapter.set('s', 'g', 'b', { id: 'b', v: 3 })
  await adapter.update('s', 'g', 'c', [{ type: 'set', path: 'v', value: 4 }])
  await client.hset('stream:s:g', 'z-engine', '{"id":"z-engine"}', 'y-engine', '{"id":"y-engine"}')
  t.same(await adapter.getGroup('s', 'g'), [
    { id: 'c', v: 4 }, { id: 'a', v: 2 }, { id: 'd' }, { id: 'b', v: 3 }, { id: 'y-engine' }, { id: 'z-engine' }
  ], 'first-insert order, re-set keeps its place, re-created goes last, unknown items last sorted')
  const snapshot = await adapter.snapshotGroup('s', 'g')
  t.equal(snapshot.rev, 8)
  t.equal(snapshot.items.length, 6)
  t.ok(snapshot.timestamp > 0)
  const item = await adapter.snapshotItem('s', 'g', 'a')
  t.same(item, { value: { id: 'a', v: 2 }, rev: 8, timestamp: snapshot.timestamp })
  await adapter.delete('s', 'g', 'd')
  t.equal(await client.zscore('stream-order:s:g', 'd'), null, 'delete removes the order entry')
})

t.test('listGroups and listAll use SCAN, never KEYS', async (t) => {
  const adapter = await open(t)
  const client = raw(t)
  // a few thousand keys: other streams, meta keys, a non-hash key under the pattern, prefixed keys
  const pipeline = client.pipeline()
  for (let i = 0; i < 3000; i++) pipeline.hset(`stream:noise${i % 50}:g${i}`, 'x', '1')
  for (let i = 0; i < 500; i++) pipeline.set(`unrelated:${i}`, 'x')
  pipeline.set('stream:todo:not-a-hash', 'x')
  pipeline.hset('other:stream:todo:g', 'x', '1')
  await pipeline.exec()
  await adapter.set('todo', 'b', '1', 1)
  await adapter.set('todo', 'a:with:colons', '1', 1)
  await adapter.set('todo', 'a', '1', 1)
  await adapter.set('todo', 'gone', '1', 1)
  await adapter.delete('todo', 'gone', '1')
  await adapter.set('t*do', 'star', '1', 1)
  await adapter.set('t?do', 'q', '1', 1)
  await adapter.set('t[o]do', 'br', '1', 1)
  await adapter.set('t\\do', 'bs', '1', 1)
  await adapter.set('tXdo', 'x', '1', 1)
  const keysBefore = await commandCount(server, 'keys')
  const scansBefore = await commandCount(server, 'scan')

  t.same(await adapter.listGroups('todo'), ['a', 'a:with:colons', 'b'], 'sorted, non-empty hashes only')
  t.same(await adapter.listGroups('t*do'), ['star'], 'glob characters in the stream name are literal')
  t.same(await adapter.listGroups('t?do'), ['q'])
  t.same(await adapter.listGroups('t[o]do'), ['br'])
  t.same(await adapter.listGroups('t\\do'), ['bs'])
  t.same(await adapter.listGroups('missing'), [])
  const all = await adapter.listAll()
  t.equal(all.count, 56)
  t.equal(all.stream.length, 56)
  t.same(all.stream.map((s) => s.id), [...all.stream.map((s) => s.id)].sort(), 'streams sorted')
  t.same(all.stream.find((s) => s.id === 'todo'), { id: 'todo', groups: ['a', 'a:with:colons', 'b'] })
  t.equal(all.stream.find((s) => s.id === 'noise7')?.groups.length, 60)
  t.same(all.stream.find((s) => s.id === 't*do'), { id: 't*do', groups: ['star'] })
  t.equal(await commandCount(server, 'keys'), keysBefore, 'no KEYS command was sent')
  t.ok(await commandCount(server, 'scan') > scansBefore, 'SCAN was used')
})

t.test('update: ops, per-op errors, prepare, missing item', async (t) => {
  const adapter = await open(t)
  const events = feed(adapter)
  const first = await adapter.update('s', 'g', 'x', [{ type: 'increment', path: 'n', by: 2 }, { type: 'append', path: 'tags', value: 'a' }],
    (value) => ({ ...(value as object), id: 'x' }))
  t.match(first, { old_value: null, new_value: { n: 2, tags: 'a', id: 'x' } })
  t.notOk('errors' in first, 'no errors member when all ops apply')
  const second = await adapter.update('s', 'g', 'x', [
    { type: 'increment', path: 'tags', by: 1 },
    { type: 'merge', value: { m: { deep: true } } },
    { type: 'remove', path: 'n' },
    { type: 'set', path: '__proto__', value: 1 }
  ])
  t.same(second.old_value, { n: 2, tags: 'a', id: 'x' })
  t.same(second.new_value, { tags: 'a', id: 'x', m: { deep: true } })
  t.same(second.errors?.map((e) => [e.op_index, e.code]), [[0, 'increment.not_number'], [3, 'set.path.proto_polluted']])
  t.same(await adapter.get('s', 'g', 'x'), { tags: 'a', id: 'x', m: { deep: true } })
  await waitFor(() => events.length >= 2, '2 events')
  t.same(events.map((e) => [e.event.type, e.rev]), [['create', 1], ['update', 2]])
  await t.rejects(adapter.update('s', 'g', 'x', 'nope' as never), { code: 'STREAMS_ERR_INVALID_ARGUMENT' })
})

t.test('200 concurrent increments from two adapters end with the exact sum', async (t) => {
  const a = await open(t)
  const b = await open(t)
  const eventsA = feed(a)
  const writes = []
  for (let i = 0; i < 200; i++) writes.push((i % 2 === 0 ? a : b).update('s', 'g', 'counter', [{ type: 'increment', path: 'n', by: 1 }]))
  const results = await Promise.all(writes)
  t.same(await a.get('s', 'g', 'counter'), { n: 200 })
  const seen = results.map((r) => (r.new_value as { n: number }).n).sort((x, y) => x - y)
  t.same(seen, Array.from({ length: 200 }, (_, i) => i + 1), 'every update saw a distinct predecessor')
  await waitFor(() => eventsA.length >= 200, '200 events')
  t.same(eventsA.map((e) => e.rev), Array.from({ length: 200 }, (_, i) => i + 1), 'one revision per change, in commit order')
  t.same(eventsA.map((e) => ((e.event as { data: { n: number } }).data.n)), Array.from({ length: 200 }, (_, i) => i + 1))
})

t.test('revisions and timestamps across two nodes; every node delivers the same order once', async (t) => {
  const a = await open(t)
  const b = await open(t)
  const eventsA = feed(a)
  const eventsB = feed(b)
  const writes: Array<Promise<unknown>> = []
  for (let i = 0; i < 300; i++) {
    const node = i % 2 === 0 ? a : b
    const group = i % 3 === 0 ? 'g1' : 'g2'
    if (i % 10 === 9) writes.push(node.publish('s', group, null, { type: 'event', event: { type: 'tick', data: i } }))
    else if (i % 7 === 6) writes.push(node.delete('s', group, `item${i % 5}`))
    else writes.push(node.set('s', group, `item${i % 5}`, { i }))
  }
  await Promise.all(writes)
  const snapshots = { g1: await a.snapshotGroup('s', 'g1'), g2: await a.snapshotGroup('s', 'g2') }
  await waitFor(() => eventsA.length === eventsB.length && eventsA.length >= 270, 'same count on both nodes')
  await sleep(100)
  t.equal(eventsA.length, eventsB.length, 'no duplicates')
  t.same(eventsB, eventsA, 'B delivers exactly what A delivers, in the same order')
  for (const group of ['g1', 'g2'] as const) {
    const mine = eventsA.filter((e) => e.group === group)
    let rev = 0
    let ts = 0
    for (const e of mine) {
      t.equal(e.rev, ++rev, 'every change and custom event takes the next rev')
      t.ok(e.timestamp > ts, 'timestamps strictly increase within the group')
      ts = e.timestamp
    }
    t.equal(snapshots[group].rev, rev, 'snapshot rev = last rev delivered')
    t.equal(snapshots[group].timestamp, ts, 'snapshot timestamp = last timestamp delivered')
  }
})

t.test('malformed channel messages are ignored', async (t) => {
  const adapter = await open(t)
  const events = feed(adapter)
  const client = raw(t)
  for (const garbage of ['', 'not json', '[]', 'null', '{"type":"stream"}', '{"type":"stream","timestamp":"x","streamName":"s","groupId":"g","event":{"type":"create"}}',
    '{"type":"stream","timestamp":1,"streamName":"s","groupId":"g","id":7,"event":{"type":"create"}}',
    '{"type":"stream","timestamp":1,"streamName":"s","groupId":"g","id":null,"event":{"type":"event","event":{}}}']) {
    await client.publish('stream::events', garbage)
  }
  await client.publish('stream::events', '{"type":"stream","timestamp":7,"streamName":"s","groupId":"g","id":"e","event":{"type":"create","data":{"a":1}}}')
  await adapter.set('s', 'g', 'x', 1)
  await waitFor(() => events.length >= 2, '2 events')
  await sleep(30)
  t.same(events.map((e) => [e.id, e.rev]), [['e', 0], ['x', 1]], 'garbage dropped, engine-style message delivered')
})

t.test('a listener that throws does not stop the others; unsubscribe works', async (t) => {
  const adapter = await open(t)
  const seen: string[] = []
  adapter.subscribe(() => { throw new Error('boom') })
  const off = adapter.subscribe((e) => { seen.push(`1:${e.id}`) })
  adapter.subscribe((e) => { seen.push(`2:${e.id}`) })
  await adapter.set('s', 'g', 'a', 1)
  await waitFor(() => seen.length === 2, 'a')
  off()
  await adapter.set('s', 'g', 'b', 1)
  await waitFor(() => seen.length === 3, 'b')
  t.same(seen, ['1:a', '2:a', '2:b'])
})

t.test('key prefix isolates data and events', async (t) => {
  const plain = await open(t)
  const prefixed = await open(t, { key_prefix: 'app1:' })
  const camel = await open(t, { keyPrefix: 'app1:' })
  const client = raw(t)
  const plainEvents = feed(plain)
  const prefixedEvents = feed(prefixed)
  await plain.set('s', 'g', 'x', 'plain')
  await prefixed.set('s', 'g', 'x', 'prefixed')
  await prefixed.set('s', 'h', 'y', 1)
  t.equal(await plain.get('s', 'g', 'x'), 'plain')
  t.equal(await prefixed.get('s', 'g', 'x'), 'prefixed')
  t.equal(await camel.get('s', 'g', 'x'), 'prefixed', 'camelCase config accepted')
  t.same(await plain.listGroups('s'), ['g'])
  t.same(await prefixed.listGroups('s'), ['g', 'h'])
  t.same(await plain.listAll(), { stream: [{ id: 's', groups: ['g'] }], count: 1 })
  t.same(await prefixed.listAll(), { stream: [{ id: 's', groups: ['g', 'h'] }], count: 1 })
  t.equal(await client.hget('app1:stream:s:g', 'x'), '"prefixed"')
  t.equal(prefixed.channel, 'app1:stream::events')
  await waitFor(() => plainEvents.length >= 1 && prefixedEvents.length >= 2, 'events')
  await sleep(30)
  t.same(plainEvents.map((e) => e.event), [{ type: 'create', data: 'plain' }])
  t.same(prefixedEvents.map((e) => e.event), [{ type: 'create', data: 'prefixed' }, { type: 'create', data: 1 }])
})

t.test('a borrowed client is used, duplicated for the subscriber, and never closed', async (t) => {
  const client = new Redis(server.url)
  t.teardown(() => client.quit())
  const adapter = createRedisAdapter({ client })
  await adapter.start()
  const events = feed(adapter)
  await adapter.set('s', 'g', 'x', 1)
  await waitFor(() => events.length === 1, 'event')
  const clientsBefore = replyText(await server.command('CLIENT', 'LIST')).trim().split('\n').length
  await adapter.close()
  await adapter.close()
  t.equal(client.status, 'ready', 'still connected after close')
  t.equal(await client.hget('stream:s:g', 'x'), '1')
  const clientsAfter = replyText(await server.command('CLIENT', 'LIST')).trim().split('\n').length
  t.equal(clientsAfter, clientsBefore - 1, 'only the duplicated subscriber was closed')

  const lazy = new Redis(server.url, { lazyConnect: true })
  t.teardown(() => lazy.quit())
  const second = createRedisAdapter({ client: lazy })
  t.teardown(() => second.close())
  await second.start()
  t.equal(lazy.status, 'ready', 'a lazy borrowed client is connected by start()')
  t.throws(() => createRedisAdapter({ client: new Redis({ lazyConnect: true, keyPrefix: 'x:' }) }), { code: 'STREAMS_ERR_INVALID_OPTION' })
  t.throws(() => createRedisAdapter({ client: {} }), { code: 'STREAMS_ERR_INVALID_OPTION' })
  t.throws(() => createRedisAdapter({ redis_url: 'http://x' }), { code: 'STREAMS_ERR_INVALID_OPTION' })
  t.throws(() => createRedisAdapter({ command_timeout_ms: -1 }), { code: 'STREAMS_ERR_INVALID_OPTION' })
})

t.test('close: idempotent, then every call rejects with ClosedError', async (t) => {
  const adapter = await open(t)
  await adapter.close()
  await adapter.close()
  for (const call of [
    () => adapter.get('s', 'g', 'x'), () => adapter.set('s', 'g', 'x', 1), () => adapter.delete('s', 'g', 'x'),
    () => adapter.getGroup('s', 'g'), () => adapter.listGroups('s'), () => adapter.listAll(),
    () => adapter.update('s', 'g', 'x', []), () => adapter.publish('s', 'g', null, { type: 'event', event: { type: 'x', data: 1 } }),
    () => adapter.snapshotGroup('s', 'g'), () => adapter.snapshotItem('s', 'g', 'x'), () => adapter.start()
  ]) {
    await t.rejects(call(), { code: 'STREAMS_ERR_CLOSED' })
  }
  t.equal(typeof adapter.subscribe(() => {}), 'function')
})

t.test('calls before start reject with a coded error', async (t) => {
  const adapter = createRedisAdapter({ redis_url: server.url })
  await t.rejects(adapter.get('s', 'g', 'x'), { code: 'STREAMS_ERR_BACKEND_UNAVAILABLE' })
  await adapter.close()
})

t.test('start() against a dead port rejects within the connect timeout and leaves nothing open', async (t) => {
  const dead = await startRedisServer()
  const url = dead.url
  await dead.close()
  const handlesBefore = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap').length
  const adapter = createRedisAdapter({ redis_url: url, connect_timeout_ms: 400 })
  const started = Date.now()
  await t.rejects(adapter.start(), { code: 'STREAMS_ERR_BACKEND_UNAVAILABLE' })
  const elapsed = Date.now() - started
  t.ok(elapsed >= 350 && elapsed < 1500, `rejected after ${elapsed} ms`)
  await sleep(1200)
  const handlesAfter = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap').length
  t.ok(handlesAfter <= handlesBefore, `no handle left open (${handlesBefore} → ${handlesAfter})`)
  await adapter.close()
})

t.test('fault: redis-server stops and comes back', async (t) => {
  const own = await startRedisServer()
  t.teardown(() => own.close())
  const a = createRedisAdapter({ redis_url: own.url, command_timeout_ms: 1000, connect_timeout_ms: 2000 })
  const b = createRedisAdapter({ redis_url: own.url, command_timeout_ms: 1000, connect_timeout_ms: 2000 })
  t.teardown(() => a.close())
  t.teardown(() => b.close())
  await a.start()
  await b.start()
  let resyncs = 0
  a.onResync(() => { resyncs++ })
  const eventsB = feed(b)
  await a.set('s', 'g', 'before', 1)
  await waitFor(() => eventsB.length === 1, 'event before')
  t.equal(resyncs, 0, 'no resync on the first connect')

  await own.stop()
  for (const call of [() => a.set('s', 'g', 'x', 1), () => a.get('s', 'g', 'x'), () => a.getGroup('s', 'g'),
    () => a.update('s', 'g', 'x', []), () => a.listAll()]) {
    const started = Date.now()
    await t.rejects(call(), { code: 'STREAMS_ERR_BACKEND_UNAVAILABLE' })
    t.ok(Date.now() - started < 3000, 'fails fast')
  }

  await own.restart()
  await waitFor(() => resyncs === 1, 'resync')
  // the command connection may need a moment more than the subscriber
  const deadline = Date.now() + 5000
  for (;;) {
    try {
      await a.set('s', 'g', 'after', 2)
      break
    } catch (err) {
      if (Date.now() > deadline) throw err
      await sleep(50)
    }
  }
  await waitFor(() => eventsB.some((e) => e.id === 'after'), 'event after on B')
  t.same(await b.get('s', 'g', 'after'), 2)
  t.equal(resyncs, 1, 'one resync per loss')
})

t.test('fault: a frozen redis-server makes calls fail within the command timeout, no hang', async (t) => {
  const own = await startRedisServer()
  t.teardown(() => own.close())
  const adapter = createRedisAdapter({ redis_url: own.url, command_timeout_ms: 300 })
  t.teardown(() => adapter.close())
  await adapter.start()
  await adapter.set('s', 'g', 'x', 1)
  own.pause()
  try {
    for (const call of [() => adapter.get('s', 'g', 'x'), () => adapter.set('s', 'g', 'y', 2), () => adapter.snapshotGroup('s', 'g')]) {
      const started = Date.now()
      await t.rejects(call(), { code: 'STREAMS_ERR_BACKEND_UNAVAILABLE' })
      const elapsed = Date.now() - started
      t.ok(elapsed >= 250 && elapsed < 1500, `rejected after ${elapsed} ms`)
    }
  } finally {
    own.resume()
  }
  t.same(await adapter.get('s', 'g', 'x'), 1, 'works again once the server answers')
})

t.test('change log: two nodes on one Redis share one log per group, kept out of the engine keys', async (t) => {
  const a = await open(t, { key_prefix: 'shared:' })
  const b = await open(t, { key_prefix: 'shared:' })
  const written: StreamEvent[] = []
  for (let i = 0; i < 20; i++) {
    const node = i % 2 === 0 ? a : b
    written.push(i % 5 === 4
      ? await node.publish('s', 'g', null, { type: 'event', event: { type: 'tick', data: i } })
      : (await node.set('s', 'g', `k${i % 3}`, { i })).event!)
  }
  const fromA = await a.readChanges('s', 'g', 0, 100)
  const fromB = await b.readChanges('s', 'g', 0, 100)
  t.same(fromA, fromB, 'an offset means the same on every node')
  t.same(fromA.changes.map(c => [c.rev, c.id, c.event]), written.map(e => [e.rev, e.id, e.event]), 'every change in revision order')
  t.same((await b.readChanges('s', 'g', 10, 3)).changes.map(c => c.rev), [11, 12, 13])
  const client = raw(t)
  t.equal(await client.type('shared:stream-log:s:g'), 'stream', 'one Redis Stream per group')
  t.same(await client.keys('shared:stream:*'), ['shared:stream:s:g'], 'engines scanning stream:* see only the items')
})

t.test('change log: a Redis that lost its data gets a new epoch, so old offsets are recognised', async (t) => {
  const own = await startRedisServer()
  t.teardown(() => own.close())
  const adapter = createRedisAdapter({ redis_url: own.url, connect_timeout_ms: 2000 })
  t.teardown(() => adapter.close())
  await adapter.start()
  await adapter.set('s', 'g', 'a', 1)
  const first = await adapter.readChanges('s', 'g', 0, 10)

  // A restart without persistence: everything is gone, the epoch key too.
  await own.restart()
  await until(async () => {
    try {
      await adapter.get('s', 'g', 'a')
      return true
    } catch { return false }
  }, 'the adapter to reconnect')
  const afterRestart = await adapter.readChanges('s', 'g', 0, 10)
  t.not(afterRestart.epoch, first.epoch, 'a new epoch after the data was lost')
  t.same([afterRestart.changes, afterRestart.rev], [[], 0])
  const next = await adapter.set('s', 'g', 'b', 2)
  t.equal((await adapter.snapshotGroup('s', 'g')).epoch, afterRestart.epoch, 'the new epoch is kept for later writes')
  t.same((await adapter.readChanges('s', 'g', 0, 10)).changes.map(c => c.rev), [next.event!.rev])

  // FLUSHALL: the same.
  await own.command('FLUSHALL')
  const afterFlush = await adapter.snapshotGroup('s', 'g')
  t.ok(afterFlush.epoch !== afterRestart.epoch && afterFlush.epoch !== first.epoch, 'a new epoch after FLUSHALL')

  // Only a group's meta key lost (its log survived): revisions would go back, so the epoch changes too.
  await adapter.set('s', 'h', 'x', 1)
  await adapter.set('s', 'h', 'x', 2)
  const before = await adapter.readChanges('s', 'h', 0, 10)
  await own.command('DEL', 'stream-meta:s:h')
  const rewritten = await adapter.set('s', 'h', 'y', 3)
  const page = await adapter.readChanges('s', 'h', 0, 10)
  t.not(page.epoch, before.epoch, 'a new epoch when the log is ahead of the revision')
  t.same(page.changes.map(c => [c.rev, c.id]), [[rewritten.event!.rev, 'y']], 'the log starts over with the new history')
})
