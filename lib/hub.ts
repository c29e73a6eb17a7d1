// The subscription index and fan-out. A room is one (stream, group); it knows, per socket, how many group
// subscriptions and which item subscriptions that socket holds there. Each event is serialised once and
// written once per socket, however many of the socket's subscriptions it matches: the stock clients route
// one frame to every room it belongs to themselves.
import type { StreamEvent } from './adapters/adapter.js'
import { eventEnvelope, syncEnvelope, textFrame, type Subscription } from './protocol.js'

/** What a socket must offer the hub: a way to take a frame. */
export interface Member {
  /** Queues one complete WebSocket frame (see textFrame) for the socket. */
  send(frame: Buffer): void
  /**
   * Queues a sync frame (send when absent). The frame may be shared with every other joiner of the same state,
   * whatever its size: the member must keep a reference to it, never a copy.
   */
  sendSync?(frame: Buffer): void
}

interface Membership {
  groupSubscriptions: number
  /** Item subscriptions by item id; made on the first one (most sockets only follow groups). */
  itemSubscriptions: Map<string, number> | null
}

interface HeldEvent { event: StreamEvent, frame: Buffer }

/**
 * One read of a group's state that every group join arriving while it is in flight waits for, instead of
 * reading the group again: a herd of joins of a big group costs one snapshot and one frame.
 */
interface SharedRead {
  state: Promise<SyncState>
  /**
   * Events dispatched to the room since the read started. The read may or may not contain them; a joiner that
   * came in after the start was not held for them, so it takes them as held events (the newer ones follow its sync).
   */
  since: HeldEvent[]
  /** The sync frame built from this read, once. */
  frame: Buffer | null
}

interface Room {
  members: Map<Member, Membership>
  /** Events held back from members whose join is reading its sync; null while no join is in flight. */
  holds: Map<Member, HeldEvent[]> | null
  /** The group read in flight, shared by the group joins that came while it runs; null when none. */
  read: SharedRead | null
}

/**
 * The state a join's sync carries, with the revision and timestamp of the last change it includes.
 * `shared`: `data` is the group's stored state at that revision, the same for every group joiner, so its
 * frame may be reused (false for state an override served, which may change without a revision).
 */
export interface SyncState {
  data: unknown
  rev: number
  timestamp: number
  shared: boolean
}

/** Bytes of group sync frames kept for joins that find the group unchanged (a herd of joins shares one). */
export const SYNC_CACHE_BYTES = 32 * 1024 * 1024

interface CachedSync { rev: number, timestamp: number, frame: Buffer }

/**
 * A sync frame too big for the cache, remembered only while something else (a socket's write queue) holds
 * it: a join of the unchanged group then shares it rather than building a copy, and nothing is pinned for it.
 */
interface LargeSync { rev: number, timestamp: number, frame: WeakRef<Buffer> }

/** The stream's length first: no separator a name could also hold, so distinct (stream, group) pairs never meet. */
function roomKey (stream: string, group: string): string {
  return `${stream.length}:${stream}${group}`
}

function owes (membership: Membership, eventId: string | null): boolean {
  if (membership.groupSubscriptions > 0) return true
  return eventId !== null && (membership.itemSubscriptions?.get(eventId) ?? 0) > 0
}

/** Would the socket get this event through a subscription other than `sub`? */
function owesWithout (membership: Membership, sub: Subscription, eventId: string | null): boolean {
  if (membership.groupSubscriptions - (sub.id === null ? 1 : 0) > 0) return true
  if (eventId === null) return false
  return (membership.itemSubscriptions?.get(eventId) ?? 0) - (sub.id === eventId ? 1 : 0) > 0
}

function matches (sub: Subscription, eventId: string | null): boolean {
  return sub.id === null || sub.id === eventId
}

export class Hub {
  private readonly rooms = new Map<string, Room>()
  /** The last group sync frame per room, valid while the group's revision and timestamp are unchanged. */
  private readonly syncFrames = new Map<string, CachedSync>()
  private syncBytes = 0
  /** Sync frames over a quarter of SYNC_CACHE_BYTES, per room, held weakly. */
  private readonly largeSyncFrames = new Map<string, LargeSync>()

  /**
   * The join handshake, in one call: adds `sub` to its room, holds the room's events for `member` while
   * `read` fetches the state, sends the sync, then releases the held events. No event is lost, none reaches
   * the new subscription twice, and none reaches it ahead of its sync. When `read` fails, the subscription is
   * removed again and the error is thrown. A member joins one subscription at a time (a connection handles
   * its frames in order).
   *
   * A group subscription that is the member's only one in its room shares the room's group read in flight
   * (group reads of one room are interchangeable): the events dispatched since that read started are held for
   * it as if it had been waiting from the start. None of them went to the member, which had no subscription there.
   */
  async join (member: Member, sub: Subscription, read: () => Promise<SyncState>): Promise<void> {
    this.add(member, sub)
    try {
      const membership = this.rooms.get(roomKey(sub.streamName, sub.groupId))?.members.get(member)
      const alone = sub.id === null && membership?.groupSubscriptions === 1 && (membership.itemSubscriptions?.size ?? 0) === 0
      await this.handshake(member, sub, read, alone)
    } catch (err) {
      this.remove(member, sub)
      throw err
    }
  }

  /**
   * Sends an existing subscription its state again, with the same guarantees as join (after a shared
   * backend's feed may have missed events). When `read` fails, the subscription stays and the error is thrown.
   * It reads on its own: the events of a read already in flight went to this subscription live, and some
   * would reach it a second time after the sync. (Its frame is still shared through the cache.)
   */
  async sync (member: Member, sub: Subscription, read: () => Promise<SyncState>): Promise<void> {
    await this.handshake(member, sub, read, false)
  }

  /** Holds the room's events for `member` while the state is read (its own read, or the room's shared one), then releases them. */
  private async handshake (member: Member, sub: Subscription, read: () => Promise<SyncState>, share: boolean): Promise<void> {
    const key = roomKey(sub.streamName, sub.groupId)
    const room = this.rooms.get(key)
    if (room === undefined) return
    room.holds ??= new Map()
    if (room.holds.has(member)) throw new Error('a member joins one subscription at a time')
    const held: HeldEvent[] = []
    room.holds.set(member, held)
    let shared: SharedRead | null = null
    if (share) {
      shared = room.read
      if (shared !== null) held.push(...shared.since)
      else shared = this.startRead(room, read)
    }
    let state: SyncState | null = null
    try {
      state = await (shared === null ? read() : shared.state)
    } finally {
      room.holds.delete(member)
      if (room.holds.size === 0) room.holds = null
      let frame: Buffer | null = null
      if (state !== null) {
        frame = shared?.frame ?? this.syncFrame(key, sub, state)
        if (shared !== null) shared.frame = frame
      }
      this.release(member, room, sub, held, state === null ? null : { timestamp: state.timestamp, frame: frame! })
      this.dropIfEmpty(key, room)
    }
  }

  /** Starts the room's shared group read; it stops collecting events once it settles. */
  private startRead (room: Room, read: () => Promise<SyncState>): SharedRead {
    // `read` runs once the read is in place (a microtask later): events it lets through are in `since`.
    const shared: SharedRead = { state: Promise.resolve().then(read), since: [], frame: null }
    room.read = shared
    const done = (): void => { if (room.read === shared) room.read = null }
    shared.state.then(done, done)
    return shared
  }

  private add (member: Member, sub: Subscription): void {
    const key = roomKey(sub.streamName, sub.groupId)
    let room = this.rooms.get(key)
    if (room === undefined) {
      room = { members: new Map(), holds: null, read: null }
      this.rooms.set(key, room)
    }
    let membership = room.members.get(member)
    if (membership === undefined) {
      membership = { groupSubscriptions: 0, itemSubscriptions: null }
      room.members.set(member, membership)
    }
    if (sub.id === null) membership.groupSubscriptions++
    else {
      membership.itemSubscriptions ??= new Map()
      membership.itemSubscriptions.set(sub.id, (membership.itemSubscriptions.get(sub.id) ?? 0) + 1)
    }
  }

  remove (member: Member, sub: Subscription): void {
    const key = roomKey(sub.streamName, sub.groupId)
    const room = this.rooms.get(key)
    const membership = room?.members.get(member)
    if (room === undefined || membership === undefined) return
    if (sub.id === null) {
      membership.groupSubscriptions--
    } else {
      const count = (membership.itemSubscriptions?.get(sub.id) ?? 0) - 1
      if (count > 0) membership.itemSubscriptions?.set(sub.id, count)
      else membership.itemSubscriptions?.delete(sub.id)
    }
    if (membership.groupSubscriptions <= 0 && (membership.itemSubscriptions?.size ?? 0) === 0) room.members.delete(member)
    this.dropIfEmpty(key, room)
  }

  /** A room lives while it has members or a join in flight. */
  private dropIfEmpty (key: string, room: Room): void {
    if (room.members.size > 0 || room.holds !== null) return
    this.rooms.delete(key)
    this.dropSync(key)
  }

  /** Sends one committed event to every socket subscribed to it (or holds it where a sync is being read). */
  /** `offset`: the group feed's offset after the event (with feeds on), an extra envelope field. */
  dispatch (event: StreamEvent, offset?: string): void {
    const key = roomKey(event.stream, event.group)
    const room = this.rooms.get(key)
    if (room === undefined) return
    this.dropSync(key)
    let frame: Buffer | undefined
    if (room.read !== null) {
      frame = textFrame(eventEnvelope(event, offset))
      room.read.since.push({ event, frame })
    }
    for (const [member, membership] of room.members) {
      const held = room.holds?.get(member)
      if (held === undefined && !owes(membership, event.id)) continue
      frame ??= textFrame(eventEnvelope(event, offset))
      if (held !== undefined) held.push({ event, frame })
      else member.send(frame)
    }
  }

  /**
   * Ends a hold: events the sync already contains (timestamp ≤ the state's) go out first, and only if
   * another subscription of the socket is owed them; then the sync (when the read succeeded); then newer
   * events, to the new subscription and to the others that are owed them.
   */
  private release (member: Member, room: Room, sub: Subscription, held: HeldEvent[], synced: { timestamp: number, frame: Buffer } | null): void {
    const membership = room.members.get(member)
    if (membership === undefined) return
    const timestamp = synced?.timestamp ?? -Infinity
    for (const { event, frame } of held) {
      if (event.timestamp <= timestamp && owesWithout(membership, sub, event.id)) member.send(frame)
    }
    if (synced !== null) {
      if (member.sendSync === undefined) member.send(synced.frame)
      else member.sendSync(synced.frame)
    }
    for (const { event, frame } of held) {
      if (event.timestamp <= timestamp) continue
      if ((synced !== null && matches(sub, event.id)) || owesWithout(membership, sub, event.id)) member.send(frame)
    }
  }

  /**
   * The sync frame. A group's stored state is the same bytes for every group subscriber of the room, so joins
   * that read the same revision and timestamp share one serialisation: from the cache up to SYNC_CACHE_BYTES,
   * and, for a frame too big for it, for as long as some socket still holds it.
   */
  private syncFrame (key: string, sub: Subscription, state: SyncState): Buffer {
    // A stock client drops a message whose timestamp is not above its last (0 at first): never send 0.
    const build = (): Buffer => textFrame(syncEnvelope(sub, Math.max(state.timestamp, 1), state.rev, state.data))
    if (sub.id !== null || !state.shared) return build()
    const same = (cached: { rev: number, timestamp: number } | undefined): boolean => cached !== undefined && cached.rev === state.rev && cached.timestamp === state.timestamp
    const cached = this.syncFrames.get(key)
    if (same(cached)) return cached!.frame
    const large = this.largeSyncFrames.get(key)
    const held = same(large) ? large!.frame.deref() : undefined
    if (held !== undefined) return held
    this.dropSync(key)
    const frame = build()
    if (frame.length > SYNC_CACHE_BYTES / 4) {
      this.largeSyncFrames.set(key, { rev: state.rev, timestamp: state.timestamp, frame: new WeakRef(frame) })
      return frame
    }
    for (const oldest of this.syncFrames.keys()) {
      if (this.syncBytes + frame.length <= SYNC_CACHE_BYTES) break
      this.dropSync(oldest)
    }
    this.syncFrames.set(key, { rev: state.rev, timestamp: state.timestamp, frame })
    this.syncBytes += frame.length
    return frame
  }

  private dropSync (key: string): void {
    this.largeSyncFrames.delete(key)
    const cached = this.syncFrames.get(key)
    if (cached === undefined) return
    this.syncFrames.delete(key)
    this.syncBytes -= cached.frame.length
  }

  /** How many rooms have at least one subscriber (for tests and metrics). */
  get size (): number {
    return this.rooms.size
  }
}
