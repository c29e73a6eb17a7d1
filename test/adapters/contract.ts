// The adapter contract suite: every backend runs exactly these checks and must give the same results
// for every call, the same order, the same revisions and the same events.
import type { Test } from 'tap'
import type { ChangeLogRetention, ChangePage, ChangeRecord, StreamAdapter, StreamEvent } from '../../lib/adapters/adapter.js'
import { until } from '../helpers/app.js'

export interface AdapterUnderTest {
  adapter: StreamAdapter
  /** Removes what the adapter left behind (files, keys); the adapter is already closed. */
  cleanup?: () => Promise<void>
  /**
   * Restarts the store (the adapter is already closed) and answers a new adapter on it, not started: the same
   * file, the same Redis (saved, then restarted), a new memory store.
   */
  restart: () => Promise<StreamAdapter>
  /** Whether the data, revisions and epoch survive `restart`. */
  durable: boolean
  /** Whether snapshots must carry each item's last-change timestamp (`GroupSnapshot.timestamps`). */
  itemTimestamps?: boolean
  /** How much the store holds: its groups, rows or keys (each backend counts its own kind). */
  footprint: () => Promise<number>
}

/** Options every backend maps onto its own config. */
export interface MakeOptions { changeLog?: ChangeLogRetention }

export type MakeAdapter = (options?: MakeOptions) => Promise<AdapterUnderTest>

const WEEK_MS = 7 * 24 * 60 * 60 * 1000

/** An event as its group's change log keeps it. */
function logged (event: StreamEvent): ChangeRecord {
  const { stream: _stream, group: _group, ...record } = event
  return record
}

/** Every change after `after`, read page by page as a feed reader would. */
async function readAll (adapter: StreamAdapter, stream: string, group: string, after: number, limit = 7): Promise<{ changes: ChangeRecord[], last: ChangePage }> {
  const changes: ChangeRecord[] = []
  for (;;) {
    const page = await adapter.readChanges!(stream, group, after, limit)
    changes.push(...page.changes)
    if (page.changes.length === 0) return { changes, last: page }
    after = page.changes[page.changes.length - 1].rev
  }
}

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
  async function fresh (t: Test, options?: MakeOptions): Promise<{ adapter: StreamAdapter, events: StreamEvent[], made: AdapterUnderTest }> {
    const made = await make(options)
    await made.adapter.start?.()
    t.teardown(async () => {
      await made.adapter.close()
      await made.cleanup?.()
    })
    return { adapter: made.adapter, events: record(made.adapter), made }
  }

  /** A started adapter that the test can restart on the same storage; whichever is current is closed at the end. */
  async function restartable (t: Test): Promise<{ made: AdapterUnderTest, current: () => StreamAdapter, restart: () => Promise<StreamAdapter> }> {
    const made = await make()
    let adapter = made.adapter
    t.teardown(async () => {
      await adapter.close()
      await made.cleanup?.()
    })
    await adapter.start?.()
    return {
      made,
      current: () => adapter,
      restart: async () => {
        await adapter.close()
        adapter = await made.restart()
        await adapter.start?.()
        return adapter
      }
    }
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

  t.test('a stored JSON null is a value: a later set or update is an update, not a create', async t => {
    const { adapter } = await fresh(t)
    t.equal((await adapter.set('s', 'g', 'n', null)).event?.event.type, 'create')
    t.equal((await adapter.set('s', 'g', 'n', null)).event?.event.type, 'update')
    t.equal((await adapter.update('s', 'g', 'n', [{ type: 'set', path: '', value: 1 }])).event?.event.type, 'update')
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

  t.test('snapshots carry each item\'s last-change timestamp, where the store keeps it', async t => {
    const { adapter, made } = await fresh(t)
    await adapter.set('s', 'g', 'a', { id: 'a' })
    const b = await adapter.set('s', 'g', 'b', { id: 'b' })
    const a = await adapter.update('s', 'g', 'a', [{ type: 'set', path: 'n', value: 1 }])
    const c = await adapter.set('s', 'g', 'c', { id: 'c' })
    await adapter.delete('s', 'g', 'c')
    await adapter.set('s', 'g', 'c', { id: 'c', again: true })
    const c2 = await adapter.set('s', 'g', 'c', { id: 'c', again: true })
    // A custom event about an item is not a change of it.
    await adapter.publish('s', 'g', 'b', { type: 'event', event: { type: 'seen', data: 1 } })
    const snapshot = await adapter.snapshotGroup('s', 'g')
    const expected = [a.event!.timestamp, b.event!.timestamp, c2.event!.timestamp]
    t.ok(c.event!.timestamp < c2.event!.timestamp)
    t.same(snapshot.ids, ['a', 'b', 'c'])
    if (made.itemTimestamps === true) {
      t.same(snapshot.timestamps, expected)
      return
    }
    // A store that knows only some (Redis: items changed while a big group was paged): those it gives are right.
    for (const [at, known] of (snapshot.timestamps ?? []).entries()) {
      if (known !== undefined) t.equal(known, expected[at], `item ${snapshot.ids[at]}`)
    }
  })

  t.test('send() to groups without items: never listed, and their state goes once their log aged out', async t => {
    const maxAgeMs = 300
    const { adapter, made } = await fresh(t, { changeLog: { maxChanges: 100, maxAgeMs } })
    const event = { type: 'event' as const, event: { type: 'ping', data: null } }
    await adapter.set('s', 'kept', 'a', { id: 'a' })
    await adapter.publish('s', 'gone', null, event)
    const last = await adapter.publish('s', 'gone', null, event)
    let newest = last.timestamp
    for (let i = 0; i < 10_000; i += 200) {
      const sent = await Promise.all(Array.from({ length: 200 }, (_, j) => adapter.publish('s', `new${i + j}`, 'x', event)))
      newest = Math.max(newest, ...sent.map(e => e.timestamp))
    }
    t.same(await adapter.listGroups('s'), ['kept'], 'listGroups shows only the group holding items')
    t.same(await adapter.listAll(), { stream: [{ id: 's', groups: ['kept'] }], count: 1 })
    // (A burst runs the clock ahead of real time, and ages follow the clock: some may be gone already.)
    t.ok(await made.footprint() > 100, 'while their log is kept, the groups are kept')
    await until(() => Date.now() > newest + maxAgeMs + 50, 'the log to age out', newest - Date.now() + maxAgeMs + 5000)
    // Retention runs when the store is written (memory, SQLite) or on its own (Redis).
    await adapter.set('s', 'kept', 'b', { id: 'b' })
    await until(async () => await made.footprint() < 20, 'the state of groups without items to go')
    t.same(await adapter.listGroups('s'), ['kept'])
    const back = await adapter.publish('s', 'gone', null, event)
    t.ok(back.rev > last.rev, `a group that comes back goes on above its old revisions (${back.rev} > ${last.rev})`)
    const page = await adapter.readChanges!('s', 'gone', last.rev - 1, 10)
    t.ok(page.trimmed > last.rev - 1, 'an offset from its earlier life is trimmed (410), never read as one of the new life')
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

  t.test('change log: every change and custom event with its revision, read in pages after an offset', async t => {
    const { adapter, events } = await fresh(t)
    await adapter.set('todo', 'inbox', 'a', { id: 'a' })
    await adapter.set('todo', 'inbox', 'b', { id: 'b' })
    await adapter.update('todo', 'inbox', 'a', [{ type: 'set', path: 'done', value: true }])
    await adapter.publish('todo', 'inbox', null, { type: 'event', event: { type: 'typing', data: { user: 'ana' } } })
    await adapter.publish('todo', 'inbox', 'a', { type: 'event', event: { type: 'seen', data: 1 } })
    await adapter.publish('todo', 'inbox', 'm', { type: 'create', data: { id: 'm' } })
    await adapter.delete('todo', 'inbox', 'b')
    await adapter.set('todo', 'other', 'x', { id: 'x' })
    await until(() => events.length === 8, 'eight events')
    const inbox = events.filter(e => e.group === 'inbox').map(logged)

    const page = await adapter.readChanges!('todo', 'inbox', 0, 100)
    t.same(page.changes, inbox, 'the log holds what the feed delivered, custom events and published changes included')
    t.same([page.rev, page.trimmed], [7, 0])
    t.equal(page.epoch, (await adapter.snapshotGroup('todo', 'inbox')).epoch, 'snapshots carry the epoch of the log')
    t.type(page.epoch, 'string')
    t.same((await adapter.readChanges!('todo', 'inbox', 3, 2)).changes, inbox.slice(3, 5), 'after an offset, at most limit')
    t.same((await readAll(adapter, 'todo', 'inbox', 0, 3)).changes, inbox, 'pages follow each other with no gap and no overlap')
    t.same((await adapter.readChanges!('todo', 'inbox', 7, 10)).changes, [], 'nothing after the last revision')
    t.same(await adapter.readChanges!('todo', 'inbox', 50, 10), { epoch: page.epoch, changes: [], rev: 7, trimmed: 0 }, 'an offset past the tail reads nothing')
    t.same(await adapter.readChanges!('todo', 'never', 0, 10), { epoch: page.epoch, changes: [], rev: 0, trimmed: 0 }, 'a group never written')
    t.same((await adapter.readChanges!('todo', 'other', 0, 10)).changes.map(c => c.rev), [1], 'each group has its own log')
    for (const [after, limit] of [[-1, 10], [1.5, 10], [0, 0], [0, Number.NaN]]) {
      await t.rejects(adapter.readChanges!('todo', 'inbox', after, limit), { code: 'STREAMS_ERR_INVALID_ARGUMENT' }, `after ${after}, limit ${limit} is refused`)
    }
  })

  t.test('change log: a snapshot and the log after its rev give the group, with no gap and no overlap, while writes run', async t => {
    const { adapter } = await fresh(t)
    const writes: Array<Promise<unknown>> = []
    for (let i = 0; i < 120; i++) {
      const id = `k${i % 9}`
      writes.push(i % 5 === 4 ? adapter.delete('s', 'busy', id) : i % 7 === 6 ? adapter.publish('s', 'busy', id, { type: 'event', event: { type: 'ping', data: i } }) : adapter.set('s', 'busy', id, { id, i }))
      if (i === 60) await writes[30]
    }
    const snapshot = await adapter.snapshotGroup('s', 'busy')
    await Promise.all(writes)
    const { changes, last } = await readAll(adapter, 's', 'busy', snapshot.rev)
    t.equal(last.epoch, snapshot.epoch)
    t.same(changes.map(c => c.rev), Array.from({ length: last.rev - snapshot.rev }, (_, i) => snapshot.rev + 1 + i), 'the log continues right after the snapshot')
    const state = new Map(snapshot.ids.map((id, index) => [id, snapshot.items[index]]))
    for (const change of changes) {
      if (change.event.type === 'delete') state.delete(change.id!)
      else if (change.event.type !== 'event') state.set(change.id!, change.event.data)
    }
    const group = await adapter.snapshotGroup('s', 'busy')
    t.same(new Map(group.ids.map((id, index) => [id, group.items[index]])), state, 'snapshot + log = the group')
  })

  t.test('change log: retention by count keeps the newest entries and reports what was trimmed', async t => {
    const { adapter } = await fresh(t, { changeLog: { maxChanges: 5, maxAgeMs: WEEK_MS } })
    for (let i = 1; i <= 300; i++) await adapter.set('s', 'g', `k${i % 4}`, { i })
    const { changes, last } = await readAll(adapter, 's', 'g', 0, 50)
    t.equal(last.rev, 300)
    t.ok(last.trimmed > 0, `old entries were dropped (trimmed up to ${last.trimmed})`)
    t.ok(changes.length >= 5 && last.rev - last.trimmed === changes.length, `at least the newest 5 are kept (${changes.length})`)
    t.same(changes.map(c => c.rev), Array.from({ length: changes.length }, (_, i) => last.trimmed + 1 + i), 'what is kept has no gap')
    t.same(changes.at(-1)?.event, { type: 'update', data: { i: 300 } })
  })

  t.test('change log: retention by age drops entries older than max_age_ms once the group is written again', async t => {
    const maxAgeMs = 100
    const { adapter } = await fresh(t, { changeLog: { maxChanges: 1000, maxAgeMs } })
    await adapter.set('s', 'g', 'a', { id: 'a' })
    await adapter.publish('s', 'g', null, { type: 'event', event: { type: 'old', data: null } })
    const old = await adapter.set('s', 'g', 'b', { id: 'b' })
    t.same((await adapter.readChanges!('s', 'g', 0, 10)).changes.length, 3)
    await until(() => Date.now() > old.event!.timestamp + maxAgeMs + 20, 'the first entries to age')
    const fresher = await adapter.set('s', 'g', 'c', { id: 'c' })
    await until(async () => (await adapter.readChanges!('s', 'g', 0, 10)).trimmed === 3, 'the aged entries to go')
    const page = await adapter.readChanges!('s', 'g', 0, 10)
    t.same(page.changes, [logged(fresher.event!)], 'only the young entry is left')
  })

  t.test('change log: max_changes 0 turns it off', async t => {
    const { adapter } = await fresh(t, { changeLog: { maxChanges: 0, maxAgeMs: WEEK_MS } })
    await adapter.set('s', 'g', 'a', { id: 'a' })
    await adapter.publish('s', 'g', null, { type: 'event', event: { type: 'e', data: null } })
    const page = await adapter.readChanges!('s', 'g', 0, 10)
    t.same([page.changes, page.rev, page.trimmed], [[], 2, 2], 'nothing kept, all of it reported trimmed')
  })

  t.test('restart: a durable store keeps its epoch, log and revisions; a memory store starts a new epoch', async t => {
    const { made, current, restart } = await restartable(t)
    let adapter = current()
    await adapter.set('s', 'g', 'a', { id: 'a' })
    await adapter.publish('s', 'g', 'a', { type: 'event', event: { type: 'seen', data: 1 } })
    await adapter.delete('s', 'g', 'a')
    const before = await adapter.readChanges!('s', 'g', 0, 10)
    adapter = await restart()
    const after = await adapter.readChanges!('s', 'g', 0, 10)
    if (!made.durable) {
      t.not(after.epoch, before.epoch, 'a new epoch: offsets from the last life are recognised as such')
      return
    }
    t.same(after, before, 'same epoch, same log, same revision')
    const next = await adapter.set('s', 'g', 'b', { id: 'b' })
    t.equal(next.event!.rev, before.rev + 1, 'revisions go on from where they were')
    t.ok(next.event!.timestamp > before.changes[2].timestamp, 'timestamps go on rising')
    t.same((await adapter.readChanges!('s', 'g', before.rev, 10)).changes, [logged(next.event!)], 'the log goes on')
    t.equal((await adapter.snapshotGroup('s', 'g')).epoch, before.epoch)
  })

  t.test('durable streams: the adapter\'s one store, kept like its items, closed with it', async t => {
    const { made, current, restart } = await restartable(t)
    let adapter = current()
    // Optional in the contract: an adapter of one's own may serve no durable streams.
    if (adapter.durableStreamStore === undefined) return
    const store = await adapter.durableStreamStore()
    t.equal(await adapter.durableStreamStore!(), store, 'the same store at every call')
    const request = { contentType: 'text/plain', ttlSeconds: null, expiresAt: null, closed: false, body: Buffer.from('a'), fork: null }
    await store.create('log', request)
    await store.append('log', { contentType: 'text/plain', body: Buffer.from('bc'), close: false, streamSeq: null, producer: { id: 'p', epoch: 0, seq: 0 } })
    const closed = adapter
    adapter = await restart()
    await t.rejects(closed.durableStreamStore!(), { code: 'STREAMS_ERR_CLOSED' }, 'gone with the adapter')
    const again = await adapter.durableStreamStore!()
    if (!made.durable) {
      await t.rejects(again.head('log'), { code: 'STREAMS_ERR_STREAM_NOT_FOUND' }, 'a memory store starts empty')
      return
    }
    const read = await again.read('log', 0, 1024)
    t.same([read.payload, read.next], [{ kind: 'bytes', bytes: Buffer.from('abc') }, 3], 'the appends survive the restart')
    const retry = await again.append('log', { contentType: 'text/plain', body: Buffer.from('bc'), close: false, streamSeq: null, producer: { id: 'p', epoch: 0, seq: 0 } })
    t.equal(retry.outcome, 'duplicate', 'so does the producer\'s state')
  })
}
