// The app.streams API: data calls and their results, the engine's function paths, the registry and triggers.
import t from 'tap'
import { FUNCTION_PATHS } from '../lib/api.js'
import type { FastifyStreams } from '../lib/index.js'
import { marked, RawClient, serve, waitFor, type Envelope } from './helpers/app.js'
import { openStock } from './helpers/stock.js'
import { gate } from './helpers/wait.js'

/**
 * A `stream` trigger on the stream `marker`; the returned function writes there and waits for it to run.
 * The triggers of every earlier write have run by then (they start before the write resolves), so a test can
 * assert that nothing more fired without waiting a fixed time.
 */
function markerTrigger (s: FastifyStreams): () => Promise<void> {
  let seen = 0
  s.registerFunction({ function_path: 'marker', handler: () => { seen++ } })
  s.registerTrigger({ trigger_type: 'stream', function_path: 'marker', config: { stream_name: 'marker' } })
  return async () => {
    const expected = seen + 1
    await s.send('marker', 'g', { type: 'marker' })
    await waitFor(() => seen >= expected, 'the marker trigger')
  }
}

t.test('data calls and their results', async t => {
  const { app } = await serve()
  t.teardown(() => app.close())
  const s = app.streams

  t.equal(await s.get('todo', 'inbox', 't1'), null, 'a missing item is null')
  t.same(await s.set('todo', 'inbox', 't1', { title: 'milk' }), { old_value: null, new_value: { title: 'milk', id: 't1' } }, 'set on a new item')
  t.same(await s.set('todo', 'inbox', 't1', { title: 'oat milk' }), { old_value: { title: 'milk', id: 't1' }, new_value: { title: 'oat milk', id: 't1' } }, 'set over an item')
  t.same(await s.get('todo', 'inbox', 't1'), { title: 'oat milk', id: 't1' })
  await s.set('todo', 'inbox', 't2', { title: 'bread' })
  await s.set('todo', 'inbox', 't0', { title: 'eggs' })
  await s.set('todo', 'done', 'x', { title: 'x' })
  await s.set('notes', 'a', 'n', 'text')
  t.same(await s.getGroup('todo', 'inbox'), [{ title: 'oat milk', id: 't1' }, { title: 'bread', id: 't2' }, { title: 'eggs', id: 't0' }], 'getGroup in insertion order')
  t.same(await s.getGroup('todo', 'nothing'), [], 'an empty group is []')
  t.same(await s.listGroups('todo'), ['done', 'inbox'])
  t.same(await s.listGroups('nothing'), [])
  t.same(await s.listAll(), { stream: [{ id: 'notes', groups: ['a'] }, { id: 'todo', groups: ['done', 'inbox'] }], count: 2 })

  t.same(await s.delete('todo', 'inbox', 't2'), { old_value: { title: 'bread', id: 't2' } }, 'delete returns the old value')
  t.same(await s.delete('todo', 'inbox', 't2'), { old_value: null }, 'delete of a missing item')
  t.same(await s.delete('never', 'never', 'never'), { old_value: null }, 'delete in a missing group')
  t.equal(await s.get('todo', 'inbox', 't2'), null)
  await s.delete('todo', 'done', 'x')
  t.same(await s.listGroups('todo'), ['inbox'], 'an emptied group is not listed')

  t.same(await s.update('todo', 'inbox', 't1', [{ type: 'set', path: 'done', value: true }, { type: 'increment', path: 'count', by: 2 }]),
    { old_value: { title: 'oat milk', id: 't1' }, new_value: { title: 'oat milk', id: 't1', done: true, count: 2 } }, 'update returns old and new')
  t.same(await s.update('todo', 'inbox', 'fresh', [{ type: 'merge', value: { a: 1 } }]), { old_value: null, new_value: { a: 1, id: 'fresh' } }, 'update of a missing item starts from {}')
  t.same(await s.update('c', 'g', 'n', [
    { type: 'set', path: 'n', value: 10 },
    { type: 'decrement', path: 'n', by: 3 },
    { type: 'append', path: 'tags', value: 'a' },
    { type: 'append', path: 'tags', value: 'b' },
    { type: 'merge', path: ['deep', 'er'], value: { x: 1 } },
    { type: 'set', path: 'gone', value: 1 },
    { type: 'remove', path: 'gone' }
  ]), { old_value: null, new_value: { n: 7, tags: 'ab', deep: { er: { x: 1 } }, id: 'n' } }, 'every op type')
})

t.test('update: per-op errors are reported, the other ops apply; prototype paths are refused', async t => {
  const { app } = await serve()
  t.teardown(() => app.close())
  const s = app.streams
  await s.set('s', 'g', 'a', { n: 1, text: 'x' })
  const result = await s.update('s', 'g', 'a', [
    { type: 'append', path: 'n', value: 1 },
    { type: 'increment', path: 'text', by: 1 },
    { type: 'set', path: 'ok', value: true },
    { type: 'merge', path: ['x', ''], value: {} },
    { type: 'increment', path: 'n', by: 4 }
  ])
  t.same(result.new_value, { n: 5, text: 'x', id: 'a', ok: true }, 'the good ops applied')
  t.same(result.errors?.map(error => [error.op_index, error.code]), [[0, 'append.type_mismatch'], [1, 'increment.not_number'], [3, 'merge.path.empty_segment']])
  await t.rejects(s.update('s', 'g', 'a', [{ type: 'set', path: 'ok', value: false }, { type: 'increment', path: 'n', by: 'x' as never }]),
    { code: 'STREAMS_ERR_INVALID_ARGUMENT' }, 'a malformed op refuses the whole update, as in the engine')
  t.ok(result.errors?.every(error => typeof error.message === 'string'))
  t.same(await s.get('s', 'g', 'a'), result.new_value, 'stored as returned')

  const hostile = await s.update('s', 'g', 'a', [
    { type: 'set', path: '__proto__', value: { polluted: true } },
    { type: 'set', path: 'constructor', value: 1 },
    { type: 'merge', path: ['__proto__'], value: { polluted: true } },
    { type: 'merge', path: ['x', 'prototype'], value: { polluted: true } },
    { type: 'merge', value: JSON.parse('{"__proto__":{"polluted":true}}') },
    { type: 'append', path: ['__proto__', 'list'], value: 1 },
    { type: 'remove', path: '__proto__' },
    { type: 'increment', path: 'constructor', by: 1 }
  ])
  t.equal(hostile.errors?.length, 8, 'every prototype path refused')
  t.ok(hostile.errors?.every(error => /proto_polluted$/.test(error.code)), 'with a proto_polluted code')
  t.same(hostile.new_value, result.new_value, 'the item is unchanged')
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype untouched')
  t.same(await s.get('s', 'g', 'a'), result.new_value)
})

t.test('injectId: object values lacking id get id: item_id, nothing else changes', async t => {
  const { app, url } = await serve()
  t.teardown(() => app.close())
  const s = app.streams
  const cases: Array<[string, unknown, unknown]> = [
    ['obj', { a: 1 }, { a: 1, id: 'obj' }],
    ['has-id', { id: 'other', a: 1 }, { id: 'other', a: 1 }],
    ['null-id', { id: null }, { id: null }],
    ['array', [1, 2], [1, 2]],
    ['string', 'text', 'text'],
    ['number', 42, 42],
    ['bool', false, false],
    ['null', null, null]
  ]
  for (const [id, value, stored] of cases) {
    t.same((await s.set('s', 'g', id, value)).new_value, stored, `set ${id}: result`)
    t.same(await s.get('s', 'g', id), stored, `set ${id}: stored`)
  }
  t.same((await s.update('s', 'g', 'upd', [{ type: 'set', path: 'a', value: 1 }])).new_value, { a: 1, id: 'upd' }, 'update injects too')
  const input = { nested: { v: 1 } }
  await s.set('s', 'g', 'copy', input)
  t.same(input, { nested: { v: 1 } }, 'the caller\'s object is not modified')

  const client = await RawClient.open(url)
  t.teardown(() => client.close())
  client.join('s', 'wire')
  await waitFor(() => client.frames.length === 1, 'sync')
  await s.set('s', 'wire', 'w', { a: 1 })
  await waitFor(() => client.frames.length === 2, 'create')
  t.same(client.frames[1].event.data, { a: 1, id: 'w' }, 'the wire carries the injected id')
})

t.test('injectId: false stores values byte-exact', async t => {
  const { app, url } = await serve({ injectId: false })
  t.teardown(() => app.close())
  const client = await RawClient.open(url)
  t.teardown(() => client.close())
  const raw: string[] = []
  client.socket.on('message', data => raw.push(data.toString()))
  client.join('s', 'g')
  await waitFor(() => raw.length === 1, 'sync')
  const value = { b: 2, a: [1, { c: null }], s: 'ü' }
  t.same(await app.streams.set('s', 'g', 'x', value), { old_value: null, new_value: value })
  t.equal(JSON.stringify(await app.streams.get('s', 'g', 'x')), JSON.stringify(value), 'read back byte-exact')
  t.same((await app.streams.update('s', 'g', 'u', [{ type: 'set', path: 'a', value: 1 }])).new_value, { a: 1 }, 'update adds no id')
  await waitFor(() => raw.length === 3, 'two events')
  t.ok(raw[1].includes(`"data":${JSON.stringify(value)}`), 'the wire carries the value as given')
})

t.test('send: custom events to the group, or to one item, never stored', async t => {
  const { app, url } = await serve()
  t.teardown(() => app.close())
  const group = await RawClient.open(url)
  const item = await RawClient.open(url)
  t.teardown(() => group.close())
  t.teardown(() => item.close())
  group.join('chat', 'room')
  item.join('chat', 'room', 'u1')
  await waitFor(() => group.frames.length === 1 && item.frames.length === 1, 'syncs')
  t.equal(await app.streams.send('chat', 'room', { type: 'typing', data: { user: 'ana' } }), undefined)
  await app.streams.send('chat', 'room', { type: 'poke' }, 'u1')
  await app.streams.send('chat', 'room', { type: 'poke' }, 'u2')
  await waitFor(() => group.frames.length === 4 && item.frames.length === 2, 'events')
  const strip = ({ timestamp, rev, ...rest }: Envelope) => rest
  t.same(group.frames.slice(1).map(strip), [
    { type: 'stream', streamName: 'chat', groupId: 'room', id: null, event: { type: 'event', event: { type: 'typing', data: { user: 'ana' } } } },
    { type: 'stream', streamName: 'chat', groupId: 'room', id: 'u1', event: { type: 'event', event: { type: 'poke', data: null } } },
    { type: 'stream', streamName: 'chat', groupId: 'room', id: 'u2', event: { type: 'event', event: { type: 'poke', data: null } } }
  ], 'the group gets all three')
  t.same(item.frames.slice(1).map(strip), [group.frames.slice(1).map(strip)[1]], 'the item subscriber only the one with its id')
  await marked(app, item, 'chat', 'room', 'u1')
  t.equal(item.frames.length, 2, 'nothing more for the item subscriber')
  t.same(await app.streams.getGroup('chat', 'room'), [], 'nothing stored')
  t.same(await app.streams.listGroups('chat'), [])
})

t.test('bad arguments are refused with coded errors', async t => {
  const { app } = await serve()
  t.teardown(() => app.close())
  const s = app.streams
  const invalidArgument = { code: 'STREAMS_ERR_INVALID_ARGUMENT' }
  const invalidName = { code: 'STREAMS_ERR_INVALID_NAME' }
  await t.rejects(s.set('s', 'g', 'a', undefined), invalidArgument, 'set without data')
  await t.rejects(s.update('s', 'g', 'a', 'ops' as never), invalidArgument, 'ops not an array')
  await t.rejects(s.update('s', 'g', 'a', { type: 'set' } as never), invalidArgument, 'ops an object')
  for (const event of [undefined, null, 'typing', {}, { type: '' }, { type: 3 }, [{ type: 'x' }]]) {
    await t.rejects(s.send('s', 'g', event as never), invalidArgument, `send ${JSON.stringify(event)}`)
  }
  await t.rejects(s.send('s', 'g', { type: 'x' }, 5 as never), invalidName, 'send with a non-string id')
  await t.rejects(s.send('s', 'g', { type: 'x' }, '__proto__'), invalidName, 'send with a reserved id')
  const names: Array<[string, () => Promise<unknown>]> = [
    ['get: stream a number', () => s.get(1 as never, 'g', 'a')],
    ['get: empty group', () => s.get('s', '', 'a')],
    ['get: item undefined', () => s.get('s', 'g', undefined as never)],
    ['set: stream with ":"', () => s.set('a:b', 'g', 'a', 1)],
    ['set: __proto__ group', () => s.set('s', '__proto__', 'a', 1)],
    ['delete: constructor item', () => s.delete('s', 'g', 'constructor')],
    ['getGroup: prototype stream', () => s.getGroup('prototype', 'g')],
    ['listGroups: null', () => s.listGroups(null as never)],
    ['update: name over the length limit', () => s.update('s', 'g', 'x'.repeat(257), [])],
    ['send: empty stream', () => s.send('', 'g', { type: 'x' })]
  ]
  for (const [label, call] of names) await t.rejects(call(), invalidName, label)
  t.same(await s.listAll(), { stream: [], count: 0 }, 'nothing was stored')
})

t.test('after app.close() every call fails with STREAMS_ERR_CLOSED', async t => {
  const { app } = await serve()
  await app.streams.set('s', 'g', 'a', 1)
  await app.close()
  const s = app.streams
  const closed = { code: 'STREAMS_ERR_CLOSED' }
  await t.rejects(s.get('s', 'g', 'a'), closed, 'get')
  await t.rejects(s.set('s', 'g', 'a', 2), closed, 'set')
  await t.rejects(s.delete('s', 'g', 'a'), closed, 'delete')
  await t.rejects(s.getGroup('s', 'g'), closed, 'getGroup')
  await t.rejects(s.listGroups('s'), closed, 'listGroups')
  await t.rejects(s.listAll(), closed, 'listAll')
  await t.rejects(s.update('s', 'g', 'a', []), closed, 'update')
  await t.rejects(s.send('s', 'g', { type: 'x' }), closed, 'send')
  await t.rejects(s.call('stream::get', { stream_name: 's', group_id: 'g', item_id: 'a' }), closed, 'call')
})

t.test('function paths: every alias takes the engine input and gives the direct API\'s result', async t => {
  const { app, url } = await serve()
  t.teardown(() => app.close())
  const s = app.streams
  const all: string[] = Object.values(FUNCTION_PATHS).flat()
  t.ok(all.includes('streams.getGroup') && all.includes('streams.list') && all.includes('stream::list_all'), 'the names DESIGN.md lists are there')
  for (const name of ['streams.get', 'streams.set', 'streams.delete', 'streams.getGroup', 'streams.list', 'streams.listGroups', 'streams.update', 'streams.send',
    'stream::get', 'stream::set', 'stream::delete', 'stream::list', 'stream::list_groups', 'stream::list_all', 'stream::send', 'stream::update']) {
    t.ok(all.includes(name), `${name} is an alias`)
  }

  for (const [index, path] of FUNCTION_PATHS.set.entries()) {
    const id = `set${index}`
    t.same(await s.call(path, { stream_name: 'fn', group_id: 'g', item_id: id, data: { v: 1 } }), { old_value: null, new_value: { v: 1, id } }, `${path} creates`)
    t.same(await s.call(path, { stream_name: 'fn', group_id: 'g', item_id: id, data: { v: 2 } }), { old_value: { v: 1, id }, new_value: { v: 2, id } }, `${path} updates`)
  }
  for (const path of FUNCTION_PATHS.get) {
    t.same(await s.call(path, { stream_name: 'fn', group_id: 'g', item_id: 'set0' }), await s.get('fn', 'g', 'set0'), `${path}`)
    t.equal(await s.call(path, { stream_name: 'fn', group_id: 'g', item_id: 'missing' }), null, `${path} of a missing item`)
  }
  for (const path of FUNCTION_PATHS.list) {
    t.same(await s.call(path, { stream_name: 'fn', group_id: 'g' }), await s.getGroup('fn', 'g'), path)
  }
  await s.set('fn', 'h', 'x', 1)
  for (const path of FUNCTION_PATHS.listGroups) {
    t.same(await s.call(path, { stream_name: 'fn' }), ['g', 'h'], path)
  }
  for (const path of FUNCTION_PATHS.listAll) {
    t.same(await s.call(path, {}), await s.listAll(), path)
    t.same(await s.call(path), await s.listAll(), `${path} without input`)
  }
  for (const [index, path] of FUNCTION_PATHS.update.entries()) {
    const result = await s.call(path, { stream_name: 'fn', group_id: 'u', item_id: 'c', ops: [{ type: 'increment', path: 'n', by: 1 }, { type: 'append', path: 'n', value: 'x' }] }) as { new_value: unknown, errors: Array<{ op_index: number }> }
    t.same(result.new_value, { n: index + 1, id: 'c' }, `${path} applies`)
    t.same(result.errors.map(error => error.op_index), [1], `${path} reports the per-op error`)
  }
  for (const [index, path] of FUNCTION_PATHS.delete.entries()) {
    const id = `set${index}`
    const before = await s.get('fn', 'g', id)
    t.same(await s.call(path, { stream_name: 'fn', group_id: 'g', item_id: id }), { old_value: before }, path)
    t.same(await s.call(path, { stream_name: 'fn', group_id: 'g', item_id: id }), { old_value: null }, `${path} again`)
  }

  const listener = await RawClient.open(url)
  t.teardown(() => listener.close())
  listener.join('fn', 'chat')
  await waitFor(() => listener.frames.length === 1, 'sync')
  for (const path of FUNCTION_PATHS.send) {
    t.equal(await s.call(path, { stream_name: 'fn', group_id: 'chat', type: 'hello', data: { path } }), null, `${path} returns null`)
    t.equal(await s.call(path, { stream_name: 'fn', group_id: 'chat', type: 'item', data: { path }, id: 'i1' }), null, `${path} with id`)
  }
  await waitFor(() => listener.frames.length === 1 + 2 * FUNCTION_PATHS.send.length, 'the sent events')
  t.same(listener.frames.slice(1).map(frame => [frame.id, frame.event.event?.type, frame.event.event?.data.path]),
    FUNCTION_PATHS.send.flatMap(path => [[null, 'hello', path], ['i1', 'item', path]]))
})

t.test('function paths: bad inputs are refused with coded errors', async t => {
  const { app } = await serve()
  t.teardown(() => app.close())
  const s = app.streams
  for (const input of ['x', 1, [], null as unknown as object]) {
    if (input === null) continue
    await t.rejects(s.call('stream::get', input), { code: 'STREAMS_ERR_INVALID_ARGUMENT' }, `input ${JSON.stringify(input)}`)
  }
  await t.rejects(s.call('stream::get', {}), { code: 'STREAMS_ERR_INVALID_NAME' }, 'missing names')
  await t.rejects(s.call('stream::set', { stream_name: 's', group_id: 'g', item_id: 'a' }), { code: 'STREAMS_ERR_INVALID_ARGUMENT' }, 'set without data')
  await t.rejects(s.call('stream::update', { stream_name: 's', group_id: 'g', item_id: 'a' }), { code: 'STREAMS_ERR_INVALID_ARGUMENT' }, 'update without ops')
  await t.rejects(s.call('stream::send', { stream_name: 's', group_id: 'g' }), { code: 'STREAMS_ERR_INVALID_ARGUMENT' }, 'send without type')
  await t.rejects(s.call('stream::set', { stream_name: '__proto__', group_id: 'g', item_id: 'a', data: 1 }), { code: 'STREAMS_ERR_INVALID_NAME' })
})

t.test('per-stream overrides: a stream whose items live in the app\'s own Map is live and synced for the stock client', async t => {
  const { app, url } = await serve()
  t.teardown(() => app.close())
  const s = app.streams
  type Input = { stream_name: string, group_id: string, item_id: string, data?: unknown, ops?: Array<{ type: string, path: string, value: unknown }> }
  // The app's own storage: group → item id → value.
  const store = new Map<string, Map<string, unknown>>()
  const groupOf = (group: string): Map<string, unknown> => store.get(group) ?? store.set(group, new Map()).get(group)!
  const inputs: Array<[string, Input]> = []
  const override = (path: string, handler: (input: Input) => unknown) =>
    s.registerFunction({ function_path: path, handler: (input: Input) => { inputs.push([path, input]); return handler(input) } })
  override('stream::get(todo)', (input) => groupOf(input.group_id).get(input.item_id) ?? null)
  override('stream::list(todo)', (input) => [...groupOf(input.group_id).values()])
  override('streams.list_groups(todo)', () => [...store.keys()].filter(group => groupOf(group).size > 0).sort())
  override('stream::set(todo)', (input) => {
    const old = groupOf(input.group_id).get(input.item_id) ?? null
    groupOf(input.group_id).set(input.item_id, input.data)
    return { old_value: old, new_value: input.data }
  })
  override('stream::update(todo)', (input) => {
    const old = groupOf(input.group_id).get(input.item_id) ?? null
    const value: Record<string, unknown> = { ...(old as object), id: input.item_id }
    for (const op of input.ops ?? []) value[op.path] = op.value
    groupOf(input.group_id).set(input.item_id, value)
    return { old_value: old, new_value: value }
  })
  override('streams.delete(todo)', (input) => {
    const old = groupOf(input.group_id).get(input.item_id) ?? null
    groupOf(input.group_id).delete(input.item_id)
    return { old_value: old }
  })
  groupOf('inbox').set('t0', { title: 'before', id: 't0' })
  const payloads: Payload[] = []
  s.registerFunction({ function_path: 'onChange', handler: (payload: Payload) => { payloads.push(payload) } })
  s.registerTrigger({ trigger_type: 'stream', function_path: 'onChange', config: { stream_name: 'todo' } })

  const stream = openStock(t, url)
  const group = stream.subscribeGroup('todo', 'inbox')
  const item = stream.subscribeItem('todo', 'inbox', 't0')
  const raw = await RawClient.open(url)
  t.teardown(() => raw.close())
  raw.join('todo', 'inbox')
  await waitFor(() => (group.getState() as unknown[]).length === 1 && item.getState() !== null && raw.frames.length === 1, 'the syncs')
  t.same(group.getState(), [{ title: 'before', id: 't0' }], 'the group sync is served by the list override')
  t.same(item.getState(), { title: 'before', id: 't0' }, 'the item sync is served by the get override')

  t.same(await s.set('todo', 'inbox', 't1', { title: 'a' }), { old_value: null, new_value: { title: 'a', id: 't1' } }, 'app.streams.set goes through the override (id injected in its input)')
  t.same(await s.call('stream::set', { stream_name: 'todo', group_id: 'inbox', item_id: 't1', data: { title: 'b' } }),
    { old_value: { title: 'a', id: 't1' }, new_value: { title: 'b', id: 't1' } }, 'so does the function path')
  t.same(await s.update('todo', 'inbox', 't0', [{ type: 'set', path: 'done', value: true }]),
    { old_value: { title: 'before', id: 't0' }, new_value: { title: 'before', id: 't0', done: true } }, 'update')
  await s.set('todo', 'inbox', 't2', { title: 'c' })
  t.same(await s.delete('todo', 'inbox', 't2'), { old_value: { title: 'c', id: 't2' } }, 'delete')
  t.same(await s.delete('todo', 'inbox', 'missing'), { old_value: null }, 'delete of a missing item')
  await s.send('todo', 'inbox', { type: 'done' })

  const expected = [...groupOf('inbox').values()]
  await waitFor(() => JSON.stringify(group.getState()) === JSON.stringify(expected), 'the stock client to follow')
  await waitFor(() => payloads.length === 6 && raw.frames.length === 7, 'every change on the wire and to the triggers')
  t.same(item.getState(), { title: 'before', id: 't0', done: true }, 'the item subscription followed the update')
  t.same(raw.frames.slice(1).map(frame => [frame.event.type, frame.id]),
    [['create', 't1'], ['update', 't1'], ['update', 't0'], ['create', 't2'], ['delete', 't2'], ['event', null]], 'the wire events, none for the missing item')
  t.same(payloads, raw.frames.slice(1), 'the stream triggers got the same frames')

  t.same(await s.get('todo', 'inbox', 't1'), { title: 'b', id: 't1' }, 'get')
  t.same(await s.getGroup('todo', 'inbox'), expected, 'getGroup')
  t.same(await s.listGroups('todo'), ['inbox'], 'listGroups (older alias spelling)')
  t.same(await s.call('stream::list', { stream_name: 'todo', group_id: 'inbox' }), expected, 'the list function path')
  t.same(await s.listAll(), { stream: [], count: 0 }, 'the adapter stored nothing')
  t.same(inputs.find(([path]) => path === 'stream::set(todo)')?.[1], { stream_name: 'todo', group_id: 'inbox', item_id: 't1', data: { title: 'a', id: 't1' } }, 'the engine input')

  await s.set('other', 'inbox', 'x', { v: 1 })
  t.same(await s.getGroup('other', 'inbox'), [{ v: 1, id: 'x' }], 'other streams use the adapter')
})

t.test('an override whose result does not have the call\'s shape fails with STREAMS_ERR_INVALID_OVERRIDE_RESULT', async t => {
  const { app, url } = await serve()
  t.teardown(() => app.close())
  const s = app.streams
  const results: Record<string, unknown> = {}
  for (const call of ['get', 'set', 'delete', 'list', 'list_groups', 'update']) {
    s.registerFunction({ function_path: `stream::${call}(bad)`, handler: () => results[call] })
  }
  const invalid = { code: 'STREAMS_ERR_INVALID_OVERRIDE_RESULT' }
  const calls: Array<[string, unknown, () => Promise<unknown>]> = [
    ['set', 'custom set', () => s.set('bad', 'g', 'a', 1)],
    ['set', { old_value: null }, () => s.set('bad', 'g', 'a', 1)],
    ['set', undefined, () => s.call('stream::set', { stream_name: 'bad', group_id: 'g', item_id: 'a', data: 1 })],
    ['update', [1], () => s.update('bad', 'g', 'a', [])],
    ['update', { new_value: 1, errors: 'x' }, () => s.update('bad', 'g', 'a', [])],
    ['delete', null, () => s.delete('bad', 'g', 'a')],
    ['delete', 'gone', () => s.delete('bad', 'g', 'a')],
    ['list', { items: [] }, () => s.getGroup('bad', 'g')],
    ['list_groups', 'g', () => s.listGroups('bad')],
    ['list_groups', [1], () => s.call('streams.listGroups', { stream_name: 'bad' })]
  ]
  for (const [call, result, run] of calls) {
    results[call] = result
    await t.rejects(run(), invalid, `${call} returning ${JSON.stringify(result)}`)
  }
  results.get = undefined
  t.equal(await s.get('bad', 'g', 'a'), null, 'get may return anything; nothing is null')
  results.set = { new_value: 2 }
  t.same(await s.set('bad', 'g', 'a', 2), { old_value: null, new_value: 2 }, 'a missing old_value is null')

  const client = await RawClient.open(url)
  t.teardown(() => client.close())
  results.list = 'nope'
  client.join('bad', 'g')
  await waitFor(() => client.frames.length === 1, 'the answer')
  t.equal(client.frames[0].event.event?.type, 'error', 'a join whose list override fails gets an error event')
  t.equal(client.frames[0].event.event?.data.code, 'STREAMS_ERR_INVALID_OVERRIDE_RESULT')
})

t.test('the registry: unknown paths, duplicates, bad triggers, unregister', async t => {
  const { app } = await serve()
  t.teardown(() => app.close())
  const s = app.streams
  await t.rejects(s.call('no.such.function', {}), { code: 'STREAMS_ERR_FUNCTION_NOT_FOUND' })
  const registered = s.registerFunction({ function_path: 'mine', handler: (input: { n: number }) => input.n * 2 })
  t.equal(await s.call('mine', { n: 21 }), 42)
  t.throws(() => s.registerFunction({ function_path: 'mine', handler: () => 0 }), { code: 'STREAMS_ERR_FUNCTION_EXISTS' })
  t.throws(() => s.registerFunction({ function_path: 'stream::get', handler: () => 0 }), { code: 'STREAMS_ERR_FUNCTION_EXISTS' }, 'a built-in path is taken')
  t.throws(() => s.registerFunction({ function_path: 'streams.getGroup', handler: () => 0 }), { code: 'STREAMS_ERR_FUNCTION_EXISTS' })
  t.throws(() => s.registerFunction({ function_path: '', handler: () => 0 }), { code: 'STREAMS_ERR_INVALID_ARGUMENT' })
  t.throws(() => s.registerFunction({ function_path: 'x', handler: 'nope' as never }), { code: 'STREAMS_ERR_INVALID_ARGUMENT' })
  t.throws(() => s.registerFunction(undefined as never), { code: 'STREAMS_ERR_INVALID_ARGUMENT' })
  registered.unregister()
  await t.rejects(s.call('mine', { n: 1 }), { code: 'STREAMS_ERR_FUNCTION_NOT_FOUND' }, 'unregistered')
  registered.unregister()
  const again = s.registerFunction({ function_path: 'mine', handler: () => 'again' })
  registered.unregister()
  t.equal(await s.call('mine'), 'again', 'a stale unregister does not remove the new registration')
  again.unregister()

  const asyncFn = s.registerFunction({ function_path: 'fails', handler: async () => { throw Object.assign(new Error('x'), { code: 'MINE' }) } })
  await t.rejects(s.call('fails', {}), { code: 'MINE' }, 'a handler error reaches the caller')
  asyncFn.unregister()

  for (const [label, registration] of [
    ['an unknown trigger type', { trigger_type: 'streams:whatever', function_path: 'f' }],
    ['a trigger type of the wrong kind', { trigger_type: 42, function_path: 'f' }],
    ['no function path', { trigger_type: 'streams:join' }],
    ['a stream trigger without config', { trigger_type: 'stream', function_path: 'f' }],
    ['a stream trigger without stream_name', { trigger_type: 'stream', function_path: 'f', config: { group_id: 'g' } }],
    ['a stream trigger with an empty stream_name', { trigger_type: 'stream', function_path: 'f', config: { stream_name: '' } }],
    ['a stream trigger with a non-string group_id', { trigger_type: 'stream', function_path: 'f', config: { stream_name: 's', group_id: 3 } }]
  ] as const) {
    t.throws(() => s.registerTrigger(registration as never), { code: 'STREAMS_ERR_INVALID_TRIGGER' }, label)
  }
  t.throws(() => s.registerTrigger(undefined as never), { code: 'STREAMS_ERR_INVALID_TRIGGER' })
})

t.test('join/leave triggers can be unregistered', async t => {
  const joins: string[] = []
  const { app, url } = await serve()
  t.teardown(() => app.close())
  app.streams.registerFunction({ function_path: 'deny', handler: () => { joins.push('deny'); return { unauthorized: true } } })
  const trigger = app.streams.registerTrigger({ trigger_type: 'streams:join', function_path: 'deny' })
  const client = await RawClient.open(url)
  t.teardown(() => client.close())
  client.join('s', 'g')
  await waitFor(() => client.frames.length === 1, 'answer')
  trigger.unregister()
  trigger.unregister()
  client.join('s', 'g')
  await waitFor(() => client.frames.length === 2, 'answer')
  t.same(client.frames.map(frame => frame.event.type), ['unauthorized', 'sync'])
  t.same(joins, ['deny'])
})

type Payload = { type: string, timestamp: number, streamName: string, groupId: string, id: string | null, event: { type: string, data?: unknown, event?: unknown }, rev: number }

t.test('the data-change trigger `stream`', async t => {
  await t.test('filtered by stream_name, group_id, item_id', async t => {
    const { app } = await serve()
    t.teardown(() => app.close())
    const s = app.streams
    const hits: Record<string, string[]> = { stream: [], group: [], item: [] }
    const settled = markerTrigger(s)
    for (const [name, config] of [['stream', { stream_name: 's' }], ['group', { stream_name: 's', group_id: 'g1' }], ['item', { stream_name: 's', group_id: 'g1', item_id: 'i1' }]] as const) {
      s.registerFunction({ function_path: `on-${name}`, handler: (payload: Payload) => { hits[name].push(`${payload.groupId}/${payload.id}`) } })
      s.registerTrigger({ trigger_type: 'stream', function_path: `on-${name}`, config })
    }
    await s.set('s', 'g1', 'i1', 1)
    await s.set('s', 'g1', 'i2', 2)
    await s.set('s', 'g2', 'i1', 3)
    await s.set('t', 'g1', 'i1', 4)
    await s.set('s2', 'g1', 'i1', 5)
    await settled()
    t.same(hits, { stream: ['g1/i1', 'g1/i2', 'g2/i1'], group: ['g1/i1', 'g1/i2'], item: ['g1/i1'] })
  })

  await t.test('fired by set, update, delete and send with the wire envelope shape; not by deleting a missing item', async t => {
    const { app, url } = await serve()
    t.teardown(() => app.close())
    const s = app.streams
    const payloads: Payload[] = []
    const settled = markerTrigger(s)
    s.registerFunction({ function_path: 'onChange', handler: (payload: Payload) => { payloads.push(payload) } })
    s.registerTrigger({ trigger_type: 'stream', function_path: 'onChange', config: { stream_name: 'todo', group_id: 'inbox' } })
    const client = await RawClient.open(url)
    t.teardown(() => client.close())
    client.join('todo', 'inbox')
    await waitFor(() => client.frames.length === 1, 'sync')

    await s.set('todo', 'inbox', 't1', { title: 'a' })
    await s.set('todo', 'inbox', 't1', { title: 'b' })
    await s.update('todo', 'inbox', 't1', [{ type: 'set', path: 'done', value: true }])
    await s.update('todo', 'inbox', 't2', [{ type: 'set', path: 'title', value: 'c' }])
    await s.delete('todo', 'inbox', 't1')
    await s.delete('todo', 'inbox', 'missing')
    await s.send('todo', 'inbox', { type: 'typing', data: { user: 'ana' } })
    await s.send('todo', 'inbox', { type: 'ping' }, 't2')
    await settled()
    await waitFor(() => client.frames.length === 8, 'seven frames')
    t.equal(payloads.length, 7, 'the delete of a missing item fired nothing')
    t.same(payloads.map(({ timestamp, rev, ...rest }) => rest), [
      { type: 'stream', streamName: 'todo', groupId: 'inbox', id: 't1', event: { type: 'create', data: { title: 'a', id: 't1' } } },
      { type: 'stream', streamName: 'todo', groupId: 'inbox', id: 't1', event: { type: 'update', data: { title: 'b', id: 't1' } } },
      { type: 'stream', streamName: 'todo', groupId: 'inbox', id: 't1', event: { type: 'update', data: { title: 'b', id: 't1', done: true } } },
      { type: 'stream', streamName: 'todo', groupId: 'inbox', id: 't2', event: { type: 'create', data: { title: 'c', id: 't2' } } },
      { type: 'stream', streamName: 'todo', groupId: 'inbox', id: 't1', event: { type: 'delete', data: { title: 'b', id: 't1', done: true } } },
      { type: 'stream', streamName: 'todo', groupId: 'inbox', id: null, event: { type: 'event', event: { type: 'typing', data: { user: 'ana' } } } },
      { type: 'stream', streamName: 'todo', groupId: 'inbox', id: 't2', event: { type: 'event', event: { type: 'ping', data: null } } }
    ])
    t.ok(payloads.every(payload => Number.isInteger(payload.timestamp) && payload.timestamp > 0), 'epoch ms timestamps')
    t.same(payloads.map(payload => Object.keys(payload)), payloads.map(() => ['type', 'timestamp', 'streamName', 'groupId', 'id', 'event', 'rev']), 'the envelope\'s fields')
    t.same(payloads, client.frames.slice(1), 'exactly the wire frames, timestamp and rev included')
  })

  await t.test('handlers run one after another, in registration order', async t => {
    const { app } = await serve()
    t.teardown(() => app.close())
    const s = app.streams
    const order: string[] = []
    const { opened, open: release } = gate()
    s.registerFunction({ function_path: 'first', handler: async (payload: Payload) => { order.push(`first:${payload.id}`); await opened; order.push('first done') } })
    s.registerFunction({ function_path: 'second', handler: (payload: Payload) => { order.push(`second:${payload.id}`) } })
    s.registerTrigger({ trigger_type: 'stream', function_path: 'first', config: { stream_name: 's' } })
    s.registerTrigger({ trigger_type: 'stream', function_path: 'second', config: { stream_name: 's' } })
    const settled = markerTrigger(s)
    await s.set('s', 'g', 'a', 1)
    await settled()
    t.same(order, ['first:a'], 'the second waits while the first runs')
    release()
    await waitFor(() => order.length === 3, 'the second handler')
    t.same(order, ['first:a', 'first done', 'second:a'])
  })

  await t.test('a JSON null is a value: create then update, on the wire and in the trigger alike', async t => {
    const { app, url } = await serve()
    t.teardown(() => app.close())
    const s = app.streams
    const payloads: Payload[] = []
    s.registerFunction({ function_path: 'onChange', handler: (payload: Payload) => { payloads.push(payload) } })
    s.registerTrigger({ trigger_type: 'stream', function_path: 'onChange', config: { stream_name: 'n' } })
    const client = await RawClient.open(url)
    t.teardown(() => client.close())
    client.join('n', 'g')
    await waitFor(() => client.frames.length === 1, 'sync')
    t.same(await s.set('n', 'g', 'x', null), { old_value: null, new_value: null })
    t.same(await s.set('n', 'g', 'x', null), { old_value: null, new_value: null })
    await s.set('n', 'g', 'x', 1)
    await waitFor(() => payloads.length === 3 && client.frames.length === 4, 'three changes')
    t.same(client.frames.slice(1).map(frame => frame.event.type), ['create', 'update', 'update'], 'a stored null is there: the second set updates it')
    t.same(payloads, client.frames.slice(1), 'the triggers agree with the wire')
    t.same(await s.getGroup('n', 'g'), [1])
  })

  await t.test('a condition function returning exactly false skips', async t => {
    const { app } = await serve()
    t.teardown(() => app.close())
    const s = app.streams
    const ran: string[] = []
    const conditions: unknown[] = []
    const settled = markerTrigger(s)
    s.registerFunction({
      function_path: 'only-big',
      handler: (payload: Payload) => {
        conditions.push(payload.id)
        const n = (payload.event.data as { n: number }).n
        return n > 10 ? true : n === 0 ? 0 : n === 1 ? null : n === 2 ? undefined : false
      }
    })
    s.registerFunction({ function_path: 'onChange', handler: (payload: Payload) => { ran.push(payload.id!) } })
    s.registerTrigger({ trigger_type: 'stream', function_path: 'onChange', config: { stream_name: 's', condition_function_id: 'only-big' } })
    await s.set('s', 'g', 'big', { n: 11 })
    await s.set('s', 'g', 'small', { n: 5 })
    await s.set('s', 'g', 'zero', { n: 0 })
    await s.set('s', 'g', 'null', { n: 1 })
    await s.set('s', 'g', 'undefined', { n: 2 })
    await settled()
    t.same(ran.sort(), ['big', 'null', 'undefined', 'zero'], 'only `false` skips')
  })

  await t.test('a throwing handler or condition does not affect the writer', async t => {
    const { app } = await serve()
    t.teardown(() => app.close())
    const s = app.streams
    let calls = 0
    s.registerFunction({ function_path: 'boom', handler: () => { calls++; throw new Error('boom') } })
    s.registerFunction({ function_path: 'async-boom', handler: async () => { calls++; throw new Error('boom') } })
    s.registerFunction({ function_path: 'ok', handler: () => true })
    s.registerTrigger({ trigger_type: 'stream', function_path: 'boom', config: { stream_name: 's' } })
    s.registerTrigger({ trigger_type: 'stream', function_path: 'async-boom', config: { stream_name: 's' } })
    s.registerTrigger({ trigger_type: 'stream', function_path: 'ok', config: { stream_name: 's', condition_function_id: 'boom' } })
    s.registerTrigger({ trigger_type: 'stream', function_path: 'not-registered', config: { stream_name: 's' } })
    t.same(await s.set('s', 'g', 'a', 1), { old_value: null, new_value: 1 })
    t.same(await s.update('s', 'g', 'b', [{ type: 'set', path: 'x', value: 1 }]), { old_value: null, new_value: { x: 1, id: 'b' } })
    t.same(await s.delete('s', 'g', 'a'), { old_value: 1 })
    t.equal(await s.send('s', 'g', { type: 'x' }), undefined)
    await waitFor(() => calls === 12, 'every trigger and condition ran')
    t.same(await s.getGroup('s', 'g'), [{ x: 1, id: 'b' }], 'the writes landed')
  })

  await t.test('a slow trigger does not hold up the writer; unregister stops it', async t => {
    const { app } = await serve()
    t.teardown(() => app.close())
    const s = app.streams
    const seen: string[] = []
    const { opened, open: release } = gate()
    s.registerFunction({ function_path: 'slow', handler: async (payload: Payload) => { await opened; seen.push(payload.id!) } })
    const trigger = s.registerTrigger({ trigger_type: 'stream', function_path: 'slow', config: { stream_name: 's' } })
    await s.set('s', 'g', 'a', 1)
    t.same(seen, [], 'set resolved before the trigger finished')
    release()
    await waitFor(() => seen.length === 1, 'the trigger')
    trigger.unregister()
    const settled = markerTrigger(s)
    await s.set('s', 'g', 'b', 1)
    await settled()
    t.same(seen, ['a'], 'no trigger after unregister')
  })
})
