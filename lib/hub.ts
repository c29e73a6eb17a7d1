// The subscription index and fan-out. A room is one (stream, group); it knows, per socket, how many group
// subscriptions and which item subscriptions that socket holds there. Each event is serialised once and
// written once per socket, however many of the socket's subscriptions it matches: the stock clients route
// one frame to every room it belongs to themselves.
import type { GroupSnapshot, StreamEvent } from './adapters/adapter.js'
import { eventEnvelope, syncEnvelope, textFrame, type Subscription } from './protocol.js'

/** What a socket must offer the hub: a way to take a frame, and the join it may be holding events for. */
export interface Member {
  /** Queues one complete WebSocket frame (see textFrame) for the socket. */
  send(frame: Buffer): void
  hold: Hold | null
}

interface Membership {
  groupSubscriptions: number
  /** Item subscriptions by item id; made on the first one (most sockets only follow groups). */
  itemSubscriptions: Map<string, number> | null
}

interface Room {
  members: Map<Member, Membership>
}

interface HeldEvent { event: StreamEvent, frame: Buffer }

/** Events of one room held back from one socket while a subscription's sync is being read. */
export interface Hold {
  room: string
  events: HeldEvent[]
}

/** Bytes of group sync frames kept for joins that find the group unchanged (a herd of joins shares one). */
export const SYNC_CACHE_BYTES = 32 * 1024 * 1024

interface CachedSync { rev: number, timestamp: number, frame: Buffer }

export function roomKey (stream: string, group: string): string {
  return `${stream}\u0000${group}`
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

  add (member: Member, sub: Subscription): void {
    const key = roomKey(sub.streamName, sub.groupId)
    let room = this.rooms.get(key)
    if (room === undefined) {
      room = { members: new Map() }
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
    if (room.members.size === 0) {
      this.rooms.delete(key)
      this.dropSync(key)
    }
  }

  /**
   * The sync frame for a group join. It is the same bytes for every group subscriber of the room, so joins that
   * read the same snapshot (same revision and timestamp) share one serialisation.
   */
  groupSyncFrame (sub: Subscription, snapshot: GroupSnapshot): Buffer {
    const key = roomKey(sub.streamName, sub.groupId)
    const cached = this.syncFrames.get(key)
    if (cached !== undefined && cached.rev === snapshot.rev && cached.timestamp === snapshot.timestamp) return cached.frame
    this.dropSync(key)
    // A stock client drops a message whose timestamp is not above its last (0 at first): never send 0.
    const frame = textFrame(syncEnvelope(sub, Math.max(snapshot.timestamp, 1), snapshot.rev, snapshot.items))
    if (frame.length > SYNC_CACHE_BYTES / 4) return frame
    for (const oldest of this.syncFrames.keys()) {
      if (this.syncBytes + frame.length <= SYNC_CACHE_BYTES) break
      this.dropSync(oldest)
    }
    this.syncFrames.set(key, { rev: snapshot.rev, timestamp: snapshot.timestamp, frame })
    this.syncBytes += frame.length
    return frame
  }

  private dropSync (key: string): void {
    const cached = this.syncFrames.get(key)
    if (cached === undefined) return
    this.syncFrames.delete(key)
    this.syncBytes -= cached.frame.length
  }

  /** Sends one committed event to every socket subscribed to it (or queues it where a sync is being read). */
  /** `offset`: the group feed's offset after the event (with feeds on), an extra envelope field. */
  dispatch (event: StreamEvent, offset?: string): void {
    const key = roomKey(event.stream, event.group)
    const room = this.rooms.get(key)
    if (room === undefined) return
    this.dropSync(key)
    let frame: Buffer | undefined
    for (const [member, membership] of room.members) {
      const held = member.hold !== null && member.hold.room === key
      if (!held && !owes(membership, event.id)) continue
      frame ??= textFrame(eventEnvelope(event, offset))
      if (held) member.hold!.events.push({ event, frame })
      else member.send(frame)
    }
  }

  /** Starts holding the room's events for `member` while the sync of `sub` is read. */
  startHold (member: Member, sub: Subscription): void {
    member.hold = { room: roomKey(sub.streamName, sub.groupId), events: [] }
  }

  /**
   * Ends the hold: events the sync already contains (timestamp ≤ the snapshot's) go out first, and only if
   * another subscription of the socket is owed them; then the sync (when given); then newer events.
   * So no event is lost, duplicated into the new subscription, or delivered ahead of its sync.
   */
  releaseHold (member: Member, sub: Subscription, snapshotTimestamp: number, syncFrame: Buffer | null): void {
    const hold = member.hold
    member.hold = null
    if (hold === null) return
    const membership = this.rooms.get(hold.room)?.members.get(member)
    for (const { event, frame } of hold.events) {
      if (event.timestamp <= snapshotTimestamp && membership !== undefined && owesWithout(membership, sub, event.id)) member.send(frame)
    }
    if (syncFrame !== null) member.send(syncFrame)
    for (const { event, frame } of hold.events) {
      if (event.timestamp <= snapshotTimestamp) continue
      if ((syncFrame !== null && matches(sub, event.id)) || (membership !== undefined && owesWithout(membership, sub, event.id))) member.send(frame)
    }
  }

  /** How many rooms have at least one subscriber (for tests and metrics). */
  get size (): number {
    return this.rooms.size
  }
}
