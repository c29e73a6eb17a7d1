// One socket: its auth context, its subscriptions, its frames handled strictly in order, its byte cap.
// A connection never touches another socket; a bad frame costs only this socket.
import type { WebSocket, RawData } from 'ws'
import type { FastifyBaseLogger } from 'fastify'
import type { Hub, Member, SyncState } from './hub.js'
import { TokenBucket } from './limits.js'
import type { StreamsMetrics } from './metrics.js'
import type { NormalizedOptions } from './options.js'
import { errorEnvelope, parseClientFrame, textFrame, unauthorizedEnvelope, type Subscription } from './protocol.js'
import type { Triggers } from './triggers.js'
import { writeFrames, type Flushable, type Outbox } from './ws.js'

export const CLOSE_GOING_AWAY = 1001
export const CLOSE_POLICY = 1008
export const CLOSE_TOO_BIG = 1009
/** Past its byte cap a socket is closed with 1013 (try again later): the client reconnects and re-syncs. */
export const CLOSE_SLOW_CONSUMER = 1013
/** Frames waiting behind a slow join before the socket counts as flooding. */
export const MAX_PENDING_FRAMES = 1024
/** Queued bytes past which a socket's outbox is written at once rather than at the end of the turn. */
export const OUTBOX_FLUSH_BYTES = 64 * 1024
/**
 * Waits before each new try of a re-sync that failed, then RESYNC_RETRY_MS's last step forever: Phoenix's
 * reconnect schedule (phoenix.js reconnectAfterMs). A client is never left silently stale.
 */
export const RESYNC_RETRY_MS = [10, 50, 100, 150, 200, 250, 500, 1000, 2000, 5000]

/** How often a join waiting for the socket to take its earlier syncs looks again (see roomForSync). */
export const SYNC_ROOM_POLL_MS = 20

/** A sync frame written to the socket and maybe not read yet: `end` is its last byte's place in what was written. */
interface DrainingSync { end: number, bytes: number, deadline: number }

/** What a connection needs from the plugin around it. */
export interface ConnectionHost {
  hub: Hub
  outbox: Outbox
  options: NormalizedOptions
  log: FastifyBaseLogger
  metrics: StreamsMetrics
  /** Reads the state a join's sync carries (through the app's overrides when it has some). */
  syncState(sub: Subscription): Promise<SyncState>
  triggers: Pick<Triggers, 'authorizeJoin' | 'runLeave'>
  forget(connection: Connection): void
}

const SETTLED: Promise<void> = Promise.resolve()

let lastConnectionId = 0

export class Connection implements Member, Flushable {
  /** Frames owed to this socket in the current turn (one, or several), written in one go by flush(). */
  private outbox: Buffer | Buffer[] | null = null
  private outboxBytes = 0
  private readonly subscriptions = new Map<string, Subscription>()
  /** The client frames still being handled, one after another; SETTLED when there are none. */
  private tail: Promise<void> = SETTLED
  private pending = 0
  private invalidFrames = 0
  private closed = false
  /** For logs: which socket a line is about. */
  readonly id = ++lastConnectionId
  private readonly frameBudget: TokenBucket
  /** When the sync being read started (see sendSync). */
  private syncStarted = 0
  /** Bytes of frames handed to the socket so far (the place of each DrainingSync is counted in these). */
  private written = 0
  /** Sync frames not yet taken by the socket, oldest first: they do not count against max_buffered_bytes. */
  private readonly draining: DrainingSync[] = []
  /** Fires at the oldest draining sync's deadline. */
  private drainTimer: NodeJS.Timeout | null = null
  /** Re-syncs that failed, waiting to be tried again, by subscription. */
  private readonly resyncRetries = new Map<Subscription, NodeJS.Timeout>()

  constructor (private readonly socket: WebSocket, readonly context: unknown, private readonly host: ConnectionHost) {
    this.frameBudget = new TokenBucket(host.options.limits.maxFrameRate, host.options.limits.frameBurst)
    socket.on('message', (data, isBinary) => this.onFrame(data, isBinary))
    socket.on('close', () => this.onClose())
    socket.on('error', (err) => host.log.debug({ err }, 'fastify-streams: socket error'))
  }

  /**
   * Queues one complete WebSocket frame; the frames queued in one turn of the event loop leave in one write,
   * or sooner once they reach OUTBOX_FLUSH_BYTES (so a long synchronous burst neither waits nor piles up).
   */
  send (frame: Buffer): void {
    if (this.closed) return
    if (this.outbox === null) {
      this.outbox = frame
      this.outboxBytes = frame.length
      this.host.outbox.add(this)
      return
    }
    if (Buffer.isBuffer(this.outbox)) this.outbox = [this.outbox, frame]
    else this.outbox.push(frame)
    this.outboxBytes += frame.length
    if (this.outboxBytes >= OUTBOX_FLUSH_BYTES) this.flush()
  }

  private sendText (payload: string): void {
    this.send(textFrame(payload))
  }

  /**
   * Queues a sync frame. It may be far larger than max_buffered_bytes (a big group) and is shared with other
   * joiners: the socket keeps a reference, and the cap counts only what is queued beyond it while it drains
   * (at most sync_drain_timeout_ms).
   */
  sendSync (frame: Buffer): void {
    if (this.closed) return
    this.host.metrics.synced(frame.length, (performance.now() - this.syncStarted) / 1000)
    const timeout = this.host.options.limits.syncDrainTimeoutMs
    this.draining.push({ end: this.written + this.outboxBytes + frame.length, bytes: frame.length, deadline: performance.now() + timeout })
    this.drainTimer ??= setTimeout(this.checkDrain, timeout).unref()
    this.send(frame)
  }

  /**
   * Bytes queued on the socket that its reader has not taken, minus what is left there of the syncs still
   * draining. `written - bufferedAmount` is what the socket has taken so far (ws control frames, a few bytes,
   * aside); a sync still in the outbox is not on the socket yet.
   */
  private bytesBehind (): number {
    return this.socket.bufferedAmount - this.syncBytesLeft(this.written)
  }

  /**
   * Bytes of draining syncs not taken by the socket yet, among the first `upTo` bytes queued for it (`written`:
   * those on the socket; more: the outbox too). Forgets the syncs taken whole.
   */
  private syncBytesLeft (upTo: number): number {
    const taken = this.written - this.socket.bufferedAmount
    while (this.draining.length > 0 && this.draining[0].end <= taken) this.draining.shift()
    let left = 0
    for (const sync of this.draining) left += Math.max(0, Math.min(sync.end, upTo) - Math.max(taken, sync.end - sync.bytes))
    return left
  }

  /**
   * Before a join or re-sync reads a sync: waits while this socket's syncs not yet taken exceed max_buffered_bytes,
   * so one socket holds at most one sync beyond its cap, however many big groups it joins at once (a socket that
   * never reads is closed at sync_drain_timeout_ms, which ends the wait).
   */
  private async roomForSync (): Promise<void> {
    while (!this.closed && this.syncBytesLeft(Infinity) > this.host.options.maxBufferedBytes) {
      await new Promise(resolve => setTimeout(resolve, SYNC_ROOM_POLL_MS))
    }
  }

  /** At the oldest draining sync's deadline: closes the socket if that sync is still not taken, else waits for the next. */
  private readonly checkDrain = (): void => {
    this.drainTimer = null
    if (this.closed) return
    this.syncBytesLeft(this.written)
    const oldest = this.draining[0]
    if (oldest === undefined) return
    const now = performance.now()
    if (oldest.deadline <= now) {
      this.host.log.debug({ socket: this.id, bytes: oldest.bytes, reason: 'sync_drain_timeout' }, 'fastify-streams: closing a socket that did not read its sync in time')
      this.host.metrics.slowConsumerClosed(CLOSE_SLOW_CONSUMER)
      this.close(CLOSE_SLOW_CONSUMER, 'slow consumer')
      return
    }
    this.drainTimer = setTimeout(this.checkDrain, oldest.deadline - now).unref()
  }

  flush (): void {
    const frames = this.outbox
    const bytes = this.outboxBytes
    this.outbox = null
    this.outboxBytes = 0
    if (this.closed || frames === null || this.socket.readyState !== this.socket.OPEN) return
    const behind = this.bytesBehind()
    if (behind > this.host.options.maxBufferedBytes) {
      this.host.log.warn({ socket: this.id, buffered: behind }, 'fastify-streams: closing a socket past its byte cap')
      this.host.metrics.slowConsumerClosed(CLOSE_SLOW_CONSUMER)
      this.close(CLOSE_SLOW_CONSUMER, 'slow consumer')
      return
    }
    this.host.metrics.framesOut(Buffer.isBuffer(frames) ? 1 : frames.length, bytes)
    this.written += bytes
    // Complete text frames (browsers hand binary ones over as Blobs the client cannot parse), written as is.
    writeFrames(this.socket, frames)
  }

  get subscriptionCount (): number {
    return this.subscriptions.size
  }

  close (code: number, reason: string): void {
    if (this.socket.readyState === this.socket.OPEN || this.socket.readyState === this.socket.CONNECTING) this.socket.close(code, reason)
    this.onClose()
  }

  private refuse (reason: string, code: number): void {
    this.host.log.debug({ socket: this.id, reason }, 'fastify-streams: refused a client frame')
    this.host.metrics.refused('invalid_frame')
    if (code === CLOSE_TOO_BIG || ++this.invalidFrames > this.host.options.maxInvalidFrames) this.close(code, reason)
  }

  private onFrame (data: RawData, isBinary: boolean): void {
    if (this.closed) return
    this.host.metrics.frameIn()
    // Checked before the frame is even parsed: one socket must not starve the others of the event loop.
    if (!this.frameBudget.take()) {
      this.host.log.debug({ socket: this.id, reason: 'frame_rate' }, 'fastify-streams: closing a socket over its frame rate')
      this.host.metrics.refused('frame_rate')
      return this.close(CLOSE_POLICY, 'frame rate limit')
    }
    const raw = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer)
    // The app may have registered @fastify/websocket with a larger limit than ours.
    if (raw.length > this.host.options.maxPayload) return this.refuse('frame over maxPayload', CLOSE_TOO_BIG)
    const parsed = parseClientFrame(raw.toString('utf8'), this.host.options.maxNameLength)
    if (parsed.kind === 'empty') return
    if (parsed.kind === 'invalid') return this.refuse(`${parsed.reason}${isBinary ? ' (binary frame)' : ''}`, CLOSE_POLICY)
    const { type, sub } = parsed.message
    // A leave naming what no subscription can be named has nothing to leave.
    if (parsed.kind === 'refused-name' && type === 'leave') return
    if (this.pending >= MAX_PENDING_FRAMES) {
      this.host.metrics.slowConsumerClosed(CLOSE_POLICY)
      return this.close(CLOSE_POLICY, 'too many pending frames')
    }
    if (parsed.kind === 'refused-name') {
      // Told in its turn, in the subscription's room, instead of left waiting forever.
      const reason = parsed.reason
      this.enqueue(async () => this.sendText(errorEnvelope(sub, Date.now(), 'STREAMS_ERR_INVALID_NAME', reason)))
    } else {
      this.enqueue(type === 'join' ? () => this.join(sub) : () => this.leave(sub))
    }
  }

  /** Runs `step` after every step queued before it: joins, leaves, re-syncs and the final cleanup never overlap. */
  private enqueue (step: () => Promise<void>): void {
    this.pending++
    this.tail = this.tail.then(step).catch((err) => {
      this.host.log.error({ err }, 'fastify-streams: failed to handle a client frame')
    }).finally(() => {
      // Nothing left in flight: drop the finished chain rather than keep it for the socket's lifetime.
      if (--this.pending === 0) this.tail = SETTLED
    })
  }

  private async join (sub: Subscription): Promise<void> {
    if (this.closed) return
    const replaced = this.subscriptions.get(sub.subscriptionId)
    if (replaced === undefined && this.subscriptions.size >= this.host.options.maxSubscriptionsPerSocket) {
      this.refuseJoin(sub, 'subscriptions')
      this.sendText(errorEnvelope(sub, Date.now(), 'STREAMS_ERR_TOO_MANY_SUBSCRIPTIONS', `at most ${this.host.options.maxSubscriptionsPerSocket} subscriptions per connection`))
      return
    }
    if (!await this.host.triggers.authorizeJoin(sub, this.context)) {
      this.refuseJoin(sub, 'join_trigger')
      this.sendText(unauthorizedEnvelope(sub, Date.now()))
      return
    }
    await this.roomForSync()
    if (this.closed) return
    if (replaced !== undefined) this.host.hub.remove(this, replaced)
    this.subscriptions.set(sub.subscriptionId, sub)
    try {
      this.syncStarted = performance.now()
      await this.host.hub.join(this, sub, () => this.host.syncState(sub))
    } catch (err) {
      this.subscriptions.delete(sub.subscriptionId)
      this.syncFailed(sub, err)
      return
    }
    this.host.metrics.joined()
    this.host.log.debug({ socket: this.id, stream: sub.streamName, group: sub.groupId, id: sub.id }, 'fastify-streams: join')
  }

  private refuseJoin (sub: Subscription, reason: 'subscriptions' | 'join_trigger'): void {
    this.host.metrics.refused(reason)
    this.host.log.debug({ socket: this.id, reason, stream: sub.streamName, group: sub.groupId, id: sub.id }, 'fastify-streams: join refused')
  }

  /** The client is told with an error event; the log gets the cause. */
  private syncFailed (sub: Subscription, err: unknown): void {
    this.host.log.warn({ err }, 'fastify-streams: could not read the state for a sync')
    const code = (err as { code?: unknown }).code
    this.sendText(errorEnvelope(sub, Date.now(), typeof code === 'string' ? code : 'STREAMS_ERR_SYNC', 'could not read the current state'))
  }

  /** Re-sends every open subscription its current state (after a shared backend's feed may have missed events). */
  resync (): void {
    if (this.closed) return
    for (const sub of this.subscriptions.values()) {
      this.cancelRetry(sub)
      this.enqueue(() => this.resyncOne(sub, 0))
    }
  }

  /**
   * Re-syncs `sub`, if the socket still holds it. A failure tells the client (an error event, on the first try)
   * and tries again after the attempt's RESYNC_RETRY_MS step, until a try succeeds or the subscription is gone.
   */
  private async resyncOne (sub: Subscription, attempt: number): Promise<void> {
    await this.roomForSync()
    if (this.closed || this.subscriptions.get(sub.subscriptionId) !== sub) return
    this.syncStarted = performance.now()
    try {
      await this.host.hub.sync(this, sub, () => this.host.syncState(sub))
    } catch (err) {
      if (attempt === 0) this.syncFailed(sub, err)
      else this.host.log.debug({ err, socket: this.id, attempt }, 'fastify-streams: a re-sync failed again')
      if (this.closed) return
      this.cancelRetry(sub)
      const delay = RESYNC_RETRY_MS[Math.min(attempt, RESYNC_RETRY_MS.length - 1)]
      this.resyncRetries.set(sub, setTimeout(() => {
        this.resyncRetries.delete(sub)
        this.enqueue(() => this.resyncOne(sub, attempt + 1))
      }, delay).unref())
    }
  }

  private cancelRetry (sub: Subscription): void {
    clearTimeout(this.resyncRetries.get(sub))
    this.resyncRetries.delete(sub)
  }

  private async leave (sub: Subscription): Promise<void> {
    // Unlike the engine (which runs the leave triggers for every leave message), a leave acts only on a
    // subscription this socket holds: otherwise one socket could run the triggers for any id, at any rate.
    const existing = this.subscriptions.get(sub.subscriptionId)
    if (existing === undefined) return
    this.subscriptions.delete(sub.subscriptionId)
    this.cancelRetry(existing)
    this.host.hub.remove(this, existing)
    this.host.metrics.left(1)
    await this.host.triggers.runLeave(existing, this.context)
  }

  private onClose (): void {
    if (this.closed) return
    this.closed = true
    if (this.drainTimer !== null) clearTimeout(this.drainTimer)
    for (const timer of this.resyncRetries.values()) clearTimeout(timer)
    this.resyncRetries.clear()
    this.host.forget(this)
    this.host.log.debug({ socket: this.id }, 'fastify-streams: disconnect')
    // After any join still in flight: every subscription left open gets its leave, once.
    this.enqueue(async () => {
      const open = [...this.subscriptions.values()]
      this.subscriptions.clear()
      for (const sub of open) this.host.hub.remove(this, sub)
      this.host.metrics.left(open.length)
      for (const sub of open) await this.host.triggers.runLeave(sub, this.context)
    })
  }
}
