// The hub's join handshake on its own, with a fake member: events racing a join's read are neither lost,
// nor sent twice, nor sent ahead of the sync, whatever moment the read captures the state.
import t from 'tap'
import type { StreamEvent } from '../lib/adapters/adapter.js'
import { Hub, SYNC_CACHE_BYTES, type Member, type SyncState } from '../lib/hub.js'
import type { Subscription } from '../lib/protocol.js'
import type { Envelope } from './helpers/app.js'

/** The payload of one unmasked text frame as textFrame builds it. */
function payloadOf (frame: Buffer): string {
  const length = frame[1]
  const offset = length < 126 ? 2 : length === 126 ? 4 : 10
  return frame.subarray(offset).toString('utf8')
}

class FakeMember implements Member {
  readonly frames: Envelope[] = []
  sendSync?: (frame: Buffer) => void
  send (frame: Buffer): void {
    this.frames.push(JSON.parse(payloadOf(frame)))
  }
}

/** One group's store: items, and the events of its writes with strictly growing rev and timestamp. */
class FakeGroup {
  readonly items = new Map<string, unknown>()
  rev = 0
  timestamp = 1000

  constructor (private readonly hub: Hub, readonly stream = 's', readonly group = 'g') {}

  write (id: string, value: unknown | undefined): void {
    const existed = this.items.has(id)
    if (value === undefined && !existed) return
    const type = value === undefined ? 'delete' : existed ? 'update' : 'create'
    const data = value === undefined ? this.items.get(id) : value
    if (value === undefined) this.items.delete(id)
    else this.items.set(id, value)
    this.emit(id, { type, data })
  }

  send (id: string | null, type: string): void {
    this.emit(id, { type: 'event', event: { type, data: null } })
  }

  private emit (id: string | null, event: StreamEvent['event']): void {
    this.hub.dispatch({ stream: this.stream, group: this.group, id, rev: ++this.rev, timestamp: ++this.timestamp, event })
  }

  state (): SyncState {
    return { data: [...this.items.values()], rev: this.rev, timestamp: this.timestamp, shared: true }
  }

  item (id: string): SyncState {
    return { data: this.items.get(id) ?? null, rev: this.rev, timestamp: this.timestamp, shared: false }
  }
}

const sub = (subscriptionId: string, id: string | null = null): Subscription => ({ subscriptionId, streamName: 's', groupId: 'g', id })

/** Replays one subscription's frames the way a client does; counts frames before the sync and after it. */
function replay (frames: Envelope[], id: string | null): { state: Map<string, unknown> | unknown, beforeSync: number, revs: number[], syncRev: number } {
  const state = new Map<string, unknown>()
  let value: unknown = null
  let synced = false
  let beforeSync = 0
  let syncRev = -1
  const revs: number[] = []
  for (const frame of frames) {
    if (id !== null && frame.id !== id) continue
    if (frame.event.type === 'sync') {
      if (frame.id !== id) continue
      synced = true
      syncRev = frame.rev!
      if (id === null) for (const item of frame.event.data as Array<{ id: string }>) state.set(item.id, item)
      else value = frame.event.data
      continue
    }
    if (!synced) { beforeSync++; continue }
    revs.push(frame.rev!)
    if (frame.event.type === 'delete') { state.delete(frame.id!); value = null }
    if (frame.event.type === 'create' || frame.event.type === 'update') { state.set(frame.id!, frame.event.data); value = frame.event.data }
  }
  return { state: id === null ? state : value, beforeSync, revs, syncRev }
}

const consecutive = (revs: number[], from: number): boolean => revs.every((rev, index) => rev === from + index + 1)

t.test('a group join: whenever the read captures the state, the subscriber ends with the store\'s state, each later event once, none before the sync', async t => {
  // Writes before the read starts, between its start and the capture, and after the capture but before it resolves.
  for (const [before, during, after] of [[0, 0, 0], [3, 0, 0], [0, 4, 0], [0, 0, 5], [2, 3, 4], [5, 5, 5]]) {
    const hub = new Hub()
    const group = new FakeGroup(hub)
    const member = new FakeMember()
    let n = 0
    const writeSome = (count: number): void => {
      for (let i = 0; i < count; i++, n++) {
        if (n % 4 === 3) group.write(`k${(n - 1) % 3}`, undefined)
        else if (n % 5 === 4) group.send(null, 'ping')
        else group.write(`k${n % 3}`, { id: `k${n % 3}`, n })
      }
    }
    writeSome(before)
    const read = async (): Promise<SyncState> => {
      writeSome(during)
      await Promise.resolve()
      const state = group.state()
      writeSome(after)
      await Promise.resolve()
      return state
    }
    await hub.join(member, sub('a'), read)
    writeSome(3)
    const label = `${before}/${during}/${after}`
    const { state, beforeSync, revs, syncRev } = replay(member.frames, null)
    t.equal(beforeSync, 0, `${label}: nothing before the sync`)
    t.ok(consecutive(revs, syncRev), `${label}: every event after the sync's revision, once, in order (${revs.join(',')} after ${syncRev})`)
    t.same(Object.fromEntries(state as Map<string, unknown>), Object.fromEntries(group.items), `${label}: the store's state`)
  }
})

t.test('joining an item while a group subscription of the same member is open: the group subscription misses nothing, the item sync is not overtaken', async t => {
  const hub = new Hub()
  const group = new FakeGroup(hub)
  const member = new FakeMember()
  await hub.join(member, sub('group'), async () => group.state())
  group.write('a', { id: 'a', v: 1 })
  await hub.join(member, sub('item', 'a'), async () => {
    group.write('a', { id: 'a', v: 2 })
    group.write('b', { id: 'b', v: 1 })
    const state = group.item('a')
    group.write('a', { id: 'a', v: 3 })
    return state
  })
  group.write('a', { id: 'a', v: 4 })
  const frames = member.frames
  const events = frames.filter(frame => frame.event.type !== 'sync')
  t.same(events.map(frame => frame.rev), [1, 2, 3, 4, 5], 'each event once (one frame per socket), in order')
  const itemSync = frames.findIndex(frame => frame.event.type === 'sync' && frame.id === 'a')
  t.same(frames.slice(itemSync).map(frame => [frame.event.type, frame.rev]), [['sync', 3], ['update', 4], ['update', 5]], 'the item sync comes before every event it does not contain')
  t.same(replay(frames, 'a').state, { id: 'a', v: 4 }, 'the item subscriber ends with the value')
})

t.test('a failed read: the error is thrown, the new subscription is gone, the others got the held events', async t => {
  const hub = new Hub()
  const group = new FakeGroup(hub)
  const member = new FakeMember()
  await hub.join(member, sub('item', 'a'), async () => group.item('a'))
  await t.rejects(hub.join(member, sub('group'), async () => {
    group.write('a', { id: 'a' })
    group.write('b', { id: 'b' })
    throw Object.assign(new Error('backend down'), { code: 'STREAMS_ERR_BACKEND_UNAVAILABLE' })
  }), { code: 'STREAMS_ERR_BACKEND_UNAVAILABLE' })
  group.write('c', { id: 'c' })
  t.same(member.frames.map(frame => [frame.event.type, frame.id]), [['sync', 'a'], ['create', 'a']], 'only what the item subscription is owed')
  await hub.join(member, sub('other', 'zzz'), async () => group.item('zzz'))
  hub.remove(member, sub('item', 'a'))
  hub.remove(member, sub('other', 'zzz'))
  t.equal(hub.size, 0, 'no room left behind')
})

t.test('group joins reading the same revision share one sync frame; an event ends the sharing', async t => {
  const hub = new Hub()
  const group = new FakeGroup(hub)
  group.write('a', { id: 'a' })
  const sent: Buffer[] = []
  const members = [0, 1, 2].map(() => ({ send: (frame: Buffer) => { sent.push(frame) } }))
  await hub.join(members[0], sub('x'), async () => group.state())
  await hub.join(members[1], sub('x'), async () => group.state())
  t.equal(sent[0], sent[1], 'the same buffer')
  group.write('b', { id: 'b' })
  await hub.join(members[2], sub('x'), async () => group.state())
  t.not(sent[sent.length - 1], sent[0], 'a new frame after the change')
  t.match(payloadOf(sent[sent.length - 1]), /"data":\[\{"id":"a"\},\{"id":"b"\}\]/)
})

t.test('a re-sync of an open subscription: the new sync replaces what it contains, later events follow it once', async t => {
  const hub = new Hub()
  const group = new FakeGroup(hub)
  const member = new FakeMember()
  await hub.join(member, sub('a'), async () => group.state())
  group.write('a', { id: 'a', v: 1 })
  await hub.sync(member, sub('a'), async () => {
    group.write('b', { id: 'b', v: 1 })
    const state = group.state()
    group.write('a', { id: 'a', v: 2 })
    return state
  })
  group.write('c', { id: 'c', v: 1 })
  t.same(member.frames.map(frame => [frame.event.type, frame.rev]), [['sync', 0], ['create', 1], ['sync', 2], ['update', 3], ['create', 4]],
    'the event inside the new sync is not sent again; the one after it is')
  await t.rejects(Promise.all([
    hub.sync(member, sub('a'), async () => group.state()),
    hub.sync(member, sub('a'), async () => group.state())
  ]), 'one handshake at a time per member and room')
})

t.test('concurrent group joins of one room share one read and one frame; a join that came during the read still gets what the read missed', async t => {
  const hub = new Hub()
  const group = new FakeGroup(hub)
  group.write('a', { id: 'a', v: 1 })
  let reads = 0
  let finish: () => void = () => {}
  const read = async (): Promise<SyncState> => {
    reads++
    await new Promise<void>(resolve => { finish = resolve })
    return state
  }
  let state = group.state()
  const members = Array.from({ length: 5 }, () => new FakeMember())
  const frames: Buffer[] = []
  for (const member of members) member.sendSync = (frame) => { frames.push(frame); member.send(frame) }
  const joins = [hub.join(members[0], sub('x'), read)]
  await Promise.resolve()
  // Captured before the next write, which reaches the room while the read is still in flight.
  state = group.state()
  group.write('b', { id: 'b', v: 1 })
  for (const member of members.slice(1)) joins.push(hub.join(member, sub('x'), read))
  await new Promise(resolve => setImmediate(resolve))
  finish()
  await Promise.all(joins)
  group.write('a', { id: 'a', v: 2 })
  t.equal(reads, 1, 'one read for five joins')
  t.equal(frames.length, 5, 'five syncs')
  t.ok(frames.every(frame => frame === frames[0]), 'one frame buffer for all')
  for (const [index, member] of members.entries()) {
    const { state: replayed, beforeSync, revs, syncRev } = replay(member.frames, null)
    t.equal(beforeSync, 0, `member ${index}: nothing before the sync`)
    t.ok(consecutive(revs, syncRev), `member ${index}: every event after the sync's revision once (${revs.join(',')} after ${syncRev})`)
    t.same(Object.fromEntries(replayed as Map<string, unknown>), Object.fromEntries(group.items), `member ${index}: the store's state`)
  }
  const next = new FakeMember()
  await hub.join(next, sub('x'), async () => { reads++; return group.state() })
  t.equal(reads, 2, 'a join after the read settled reads again')
})

t.test('a sync frame too big for the cache is shared by a later join of the unchanged group while a socket still holds it', async t => {
  const hub = new Hub()
  const group = new FakeGroup(hub)
  group.write('big', { id: 'big', blob: 'x'.repeat(SYNC_CACHE_BYTES / 4) })
  const held: Buffer[] = []
  const members = [0, 1].map(() => ({ send: (frame: Buffer) => { held.push(frame) } }))
  await hub.join(members[0], sub('x'), async () => group.state())
  t.ok(held[0].length > SYNC_CACHE_BYTES / 4, 'over the cache\'s per-frame limit')
  await hub.join(members[1], sub('x'), async () => group.state())
  t.equal(held[1], held[0], 'the same buffer, not a second copy')
  group.write('small', { id: 'small' })
  const late = { send: (frame: Buffer) => { held.push(frame) } }
  await hub.join(late, sub('x'), async () => group.state())
  t.not(held[2], held[0], 'a change ends the sharing')
})

t.test('a re-sync does not share a join\'s read in flight: an event it already got live is not sent again', async t => {
  const hub = new Hub()
  const group = new FakeGroup(hub)
  const open = new FakeMember()
  await hub.join(open, sub('x'), async () => group.state())
  let finish: () => void = () => {}
  const joining = hub.join(new FakeMember(), sub('y'), async () => {
    const state = group.state()
    await new Promise<void>(resolve => { finish = resolve })
    return state
  })
  await new Promise(resolve => setImmediate(resolve))
  group.send(null, 'ping')
  const resync = hub.sync(open, sub('x'), async () => group.state())
  finish()
  await Promise.all([joining, resync])
  t.same(open.frames.map(frame => frame.event.type), ['sync', 'event', 'sync'], 'the custom event once, the re-sync after it')
})
