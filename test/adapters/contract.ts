// The adapter contract suite: every backend runs exactly these checks and must give the same results
// for every call, the same order, the same revisions and the same events.
import type { Test } from 'tap'
import type { StreamAdapter, StreamEvent } from '../../lib/adapters/adapter.js'
import { until } from '../helpers/app.js'

export interface AdapterUnderTest {
  adapter: StreamAdapter
  /** Removes what the adapter left behind (files, keys); the adapter is already closed. */
  cleanup?: () => Promise<void>
}

export type MakeAdapter = () => Promise<AdapterUnderTest>

function record (adapter: StreamAdapter): StreamEvent[] {
  const events: StreamEvent[] = []
  adapter.subscribe(event => events.push(event))
  return events
}

/** A write's result as the engine shapes it, without the committed event the adapter adds. */
function withoutEvent<R extends { event: unknown }> (result: R): Omit<R, 'event'> {
  const { event: _event, ...rest } = result
  return rest
}

export function adapterContract (t: Test, make: MakeAdapter): void {
  async function fresh (t: Test): Promise<{ adapter: StreamAdapter, events: StreamEvent[] }> {
    const made = await make()
    await made.adapter.start?.()
    t.teardown(async () => {
      await made.adapter.close()
      await made.cleanup?.()
    })
    return { adapter: made.adapter, events: record(made.adapter) }
  }

  t.test('set creates then updates, get reads back, events carry rev and timestamp', async t => {
    const { adapter, events } = await fresh(t)
    t.same(await adapter.get('todo', 'inbox', 't1'), null, 'missing item reads as null')
    const created = await adapter.set('todo', 'inbox', 't1', { id: 't1', title: 'a' })
    const updated = await adapter.set('todo', 'inbox', 't1', { id: 't1', title: 'b' })
    t.same(withoutEvent(created), { old_value: null, new_value: { id: 't1', title: 'a' } })
    t.same(withoutEvent(updated), { old_value: { id: 't1', title: 'a' }, new_value: { id: 't1', title: 'b' } })
    t.same(await adapter.get('todo', 'inbox', 't1'), { id: 't1', title: 'b' })
    await until(() => events.length === 2, 'two events')
    t.same([created.event, updated.event], events, 'each write answers the event it committed')
    t.same(events.map(e => [e.stream, e.group, e.id, e.rev, e.event]), [
      ['todo', 'inbox', 't1', 1, { type: 'create', data: { id: 't1', title: 'a' } }],
      ['todo', 'inbox', 't1', 2, { type: 'update', data: { id: 't1', title: 'b' } }]
    ])
    t.ok(events[1].timestamp > events[0].timestamp, 'timestamps strictly increase')
    t.ok(Math.abs(events[0].timestamp - Date.now()) < 60_000, 'timestamps are epoch milliseconds')
  })

  t.test('JSON values of every kind round-trip unchanged', async t => {
    const { adapter } = await fresh(t)
    const values: unknown[] = ['text', 42, 1.5, true, [1, 'two', { three: 3 }], { nested: { deep: [null, 'ü ✓ 😀'] }, n: -0.25 }]
    for (const [index, value] of values.entries()) await adapter.set('kinds', 'g', `v${index}`, value)
    for (const [index, value] of values.entries()) t.same(await adapter.get('kinds', 'g', `v${index}`), value)
    t.same(await adapter.getGroup('kinds', 'g'), values)
  })

  t.test('stored values are detached from the objects written and read', async t => {
    const { adapter } = await fresh(t)
    const written = { id: 'a', tags: ['x'] }
    await adapter.set('s', 'g', 'a', written)
    written.tags.push('mutated after set')
    const read = await adapter.get('s', 'g', 'a') as { tags: string[] }
    read.tags.push('mutated after get')
    const [listed] = await adapter.getGroup('s', 'g') as Array<{ tags: string[] }>
    listed.tags.push('mutated after getGroup')
    const updated = await adapter.update('s', 'g', 'a', [{ type: 'set', path: 'n', value: 1 }])
    ;(updated.new_value as { tags: string[] }).tags.push('mutated after update')
    t.same(await adapter.get('s', 'g', 'a'), { id: 'a', tags: ['x'], n: 1 })
    await t.rejects(adapter.set('s', 'g', 'b', { big: 1n }), { code: 'STREAMS_ERR_INVALID_ARGUMENT' }, 'a value JSON cannot hold is refused')
  })

  t.test('delete returns the old value and emits it; deleting a missing item emits nothing', async t => {
    const { adapter, events } = await fresh(t)
    await adapter.set('todo', 'inbox', 't1', { id: 't1' })
    const deleted = await adapter.delete('todo', 'inbox', 't1')
    t.same(withoutEvent(deleted), { old_value: { id: 't1' } })
    t.same(await adapter.delete('todo', 'inbox', 't1'), { old_value: null, event: null })
    t.same(await adapter.delete('todo', 'nowhere', 'x'), { old_value: null, event: null })
    t.same(await adapter.get('todo', 'inbox', 't1'), null)
    await adapter.publish('todo', 'inbox', null, { type: 'event', event: { type: 'marker', data: null } })
    await until(() => events.length === 3, 'events up to the marker')
    t.same(events.map(e => [e.event.type, e.rev]), [['create', 1], ['delete', 2], ['event', 3]], 'no event for the missing deletes')
    t.same(deleted.event, events[1])
    t.same(events[1].event, { type: 'delete', data: { id: 't1' } })
  })

  t.test('getGroup keeps first-insert order; a re-set keeps its place, a re-create goes last', async t => {
    const { adapter } = await fresh(t)
    for (const id of ['c', 'a', 'b']) await adapter.set('s', 'g', id, { id })
    await adapter.set('s', 'g', 'a', { id: 'a', v: 2 })
    t.same(await adapter.getGroup('s', 'g'), [{ id: 'c' }, { id: 'a', v: 2 }, { id: 'b' }])
    await adapter.delete('s', 'g', 'c')
    await adapter.set('s', 'g', 'c', { id: 'c', v: 3 })
    t.same(await adapter.getGroup('s', 'g'), [{ id: 'a', v: 2 }, { id: 'b' }, { id: 'c', v: 3 }])
    t.same(await adapter.getGroup('s', 'empty'), [])
  })

  t.test('listGroups and listAll: sorted, only groups holding items, group ids may contain ":"', async t => {
    const { adapter } = await fresh(t)
    await adapter.set('b', 'zeta', '1', { id: '1' })
    await adapter.set('b', 'alpha', '1', { id: '1' })
    await adapter.set('b', 'room:42', '1', { id: '1' })
    await adapter.set('a', 'only', '1', { id: '1' })
    await adapter.set('b', 'gone', '1', { id: '1' })
    await adapter.delete('b', 'gone', '1')
    t.same(await adapter.listGroups('b'), ['alpha', 'room:42', 'zeta'])
    t.same(await adapter.listGroups('nothing'), [])
    t.same(await adapter.listAll(), { stream: [{ id: 'a', groups: ['only'] }, { id: 'b', groups: ['alpha', 'room:42', 'zeta'] }], count: 2 })
  })

  t.test('update applies the engine ops atomically and reports per-op errors', async t => {
    const { adapter, events } = await fresh(t)
    const first = await adapter.update('s', 'g', 'u', [
      { type: 'increment', path: 'count', by: 5 },
      { type: 'decrement', path: 'left', by: 2 },
      { type: 'merge', value: { title: 'hello', tags: [] } },
      { type: 'append', path: 'tags', value: 'x' },
      { type: 'append', path: 'title', value: '!' },
      { type: 'set', path: 'done', value: false }
    ])
    t.same(withoutEvent(first), { old_value: null, new_value: { count: 5, left: -2, title: 'hello!', tags: ['x'], done: false } })
    const second = await adapter.update('s', 'g', 'u', [
      { type: 'increment', path: 'title', by: 1 },
      { type: 'merge', path: ['meta', 'author'], value: { name: 'ana' } },
      { type: 'merge', path: '__proto__', value: { polluted: true } },
      { type: 'set', path: 'constructor', value: 1 },
      { type: 'remove', path: 'left' },
      { type: 'merge', value: 'not an object' } as never,
      { type: 'append', path: 'done', value: 'x' }
    ])
    t.same(second.new_value, { count: 5, title: 'hello!', tags: ['x'], done: false, meta: { author: { name: 'ana' } } })
    t.same(second.errors?.map(e => [e.op_index, e.code]), [
      [0, 'increment.not_number'],
      [2, 'merge.path.proto_polluted'],
      [3, 'set.path.proto_polluted'],
      [5, 'merge.value.not_an_object'],
      [6, 'append.type_mismatch']
    ])
    await t.rejects(adapter.update('s', 'g', 'u', [{ type: 'set', path: 'n', value: 1 }, { type: 'nope' } as never]),
      { code: 'STREAMS_ERR_INVALID_ARGUMENT' }, 'a malformed op refuses the whole update')
    t.equal(({} as Record<string, unknown>).polluted, undefined, 'no prototype was polluted')
    t.same(await adapter.get('s', 'g', 'u'), second.new_value, 'the result is stored')
    const replaced = await adapter.update('s', 'g', 'u', [{ type: 'set', path: '', value: { fresh: true } }], value => ({ ...(value as object), id: 'u' }))
    t.same(replaced.new_value, { fresh: true, id: 'u' }, 'prepare runs on the result before it is stored')
    t.same(await adapter.get('s', 'g', 'u'), { fresh: true, id: 'u' })
    await until(() => events.length === 3, 'three update events')
    t.same(events.map(e => [e.event.type, e.rev]), [['create', 1], ['update', 2], ['update', 3]])
  })

  t.test('concurrent updates of one item all land', async t => {
    const { adapter } = await fresh(t)
    await Promise.all(Array.from({ length: 100 }, () => adapter.update('s', 'g', 'counter', [{ type: 'increment', path: 'n', by: 1 }])))
    t.same(await adapter.get('s', 'g', 'counter'), { n: 100 })
  })

  t.test('published events: not stored, each takes the next revision and a later timestamp', async t => {
    const { adapter, events } = await fresh(t)
    await adapter.set('chat', 'room', 'm1', { id: 'm1' })
    const typing = await adapter.publish('chat', 'room', null, { type: 'event', event: { type: 'typing', data: { user: 'ana' } } })
    await adapter.publish('chat', 'room', 'm1', { type: 'event', event: { type: 'seen', data: 1 } })
    // A change made elsewhere (a data-function override) is published, not stored.
    await adapter.publish('chat', 'room', 'm2', { type: 'create', data: { id: 'm2' } })
    await until(() => events.length === 4, 'four events')
    t.same(events.slice(1).map(e => [e.id, e.rev, e.event]), [
      [null, 2, { type: 'event', event: { type: 'typing', data: { user: 'ana' } } }],
      ['m1', 3, { type: 'event', event: { type: 'seen', data: 1 } }],
      ['m2', 4, { type: 'create', data: { id: 'm2' } }]
    ])
    t.same(typing, events[1], 'publish answers the event it emitted')
    t.ok(events[3].timestamp > events[2].timestamp && events[2].timestamp > events[1].timestamp && events[1].timestamp > events[0].timestamp)
    t.same(await adapter.getGroup('chat', 'room'), [{ id: 'm1' }], 'nothing stored')
  })

  t.test('snapshots carry the revision and timestamp of the last change they include', async t => {
    const { adapter, events } = await fresh(t)
    t.match(await adapter.snapshotGroup('s', 'never'), { items: [], ids: [], rev: 0, timestamp: 0 })
    t.same(await adapter.snapshotItem('s', 'never', 'x'), { value: null, rev: 0, timestamp: 0 })
    await adapter.set('s', 'g', 'a', { id: 'a' })
    await adapter.set('s', 'g', 'b', { id: 'b' })
    await until(() => events.length === 2, 'two events')
    t.match(await adapter.snapshotGroup('s', 'g'), { items: [{ id: 'a' }, { id: 'b' }], ids: ['a', 'b'], rev: 2, timestamp: events[1].timestamp })
    t.same(await adapter.snapshotItem('s', 'g', 'a'), { value: { id: 'a' }, rev: 2, timestamp: events[1].timestamp })
    t.same(await adapter.snapshotItem('s', 'g', 'zz'), { value: null, rev: 2, timestamp: events[1].timestamp })
  })

  t.test('many concurrent writes: revisions +1 and timestamps rising, in commit order', async t => {
    const { adapter, events } = await fresh(t)
    const writes = Array.from({ length: 300 }, (_, i) => i % 7 === 6
      ? adapter.delete('s', 'hot', `k${i % 10}`)
      : adapter.set('s', 'hot', `k${i % 10}`, { id: `k${i % 10}`, i }))
    await Promise.all(writes)
    const stored = (await adapter.snapshotGroup('s', 'hot'))
    await until(() => events.length === stored.rev, 'every change in the feed')
    t.same(events.map(e => e.rev), Array.from({ length: stored.rev }, (_, i) => i + 1), 'revisions 1..n in order')
    t.ok(events.every((e, i) => i === 0 || e.timestamp > events[i - 1].timestamp), 'timestamps strictly increase')
    t.equal(stored.timestamp, events[events.length - 1].timestamp)
    // Replaying the feed gives the stored state.
    const replay = new Map<string, unknown>()
    for (const e of events) {
      if (e.event.type === 'delete') replay.delete(e.id!)
      else if (e.event.type !== 'event') replay.set(e.id!, e.event.data)
    }
    t.same(new Set(stored.items.map(item => JSON.stringify(item))), new Set([...replay.values()].map(item => JSON.stringify(item))))
  })

  t.test('an unsubscribed listener gets nothing more', async t => {
    const { adapter, events } = await fresh(t)
    const mine: StreamEvent[] = []
    const stop = adapter.subscribe(event => mine.push(event))
    await adapter.set('s', 'g', 'a', 1)
    await until(() => mine.length === 1 && events.length === 1, 'first event')
    stop()
    await adapter.set('s', 'g', 'b', 2)
    await until(() => events.length === 2, 'second event')
    t.equal(mine.length, 1)
  })

  t.test('after close every call fails with STREAMS_ERR_CLOSED', async t => {
    const made = await make()
    await made.adapter.start?.()
    await made.adapter.close()
    await made.adapter.close()
    await t.rejects(made.adapter.get('s', 'g', 'a'), { code: 'STREAMS_ERR_CLOSED' })
    await t.rejects(made.adapter.set('s', 'g', 'a', 1), { code: 'STREAMS_ERR_CLOSED' })
    await made.cleanup?.()
  })
}
