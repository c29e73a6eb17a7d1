// Group feeds: every group is readable as a Durable Streams JSON stream (the protocol's read path: GET, HEAD,
// catch-up, long-poll, SSE), in the State Protocol's message shapes, from the adapter's change log.
// Offset -1 answers a snapshot of the group whose next offset is its revision; any other offset answers the log
// after it. Live readers wake from the adapter's event feed, never by polling. Design notes: docs/feeds.md.
import { randomUUID } from 'node:crypto'
import type { ServerResponse } from 'node:http'
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { ChangePage, ChangeRecord, GroupSnapshot, StreamAdapter, StreamEvent } from '../adapters/adapter.js'
import {
  FeedBusyError, FeedMethodError, FeedRequestError, ForbiddenError, InvalidAdapterError, OffsetGoneError
} from '../errors.js'
import type { FeedsConfig, NormalizedOptions } from '../options.js'
import { checkName, type Subscription } from '../protocol.js'
import { encodeOffset, epochToken, parseOffset, type ParsedOffset } from './offsets.js'
import { SharedReads, SseChunks, SseWriter, httpChunk, nextCursor, sseControl, sseEvent } from './live.js'
import { Outbox, type Flushable } from '../ws.js'

/** What the plugin lends the feeds: the store, the options, and the socket's auth and join checks. */
export interface FeedsHost {
  adapter: StreamAdapter
  options: NormalizedOptions
  log: FastifyBaseLogger
  /**
   * The socket's auth, shared: `preValidation` runs the auth function on the request and answers 401 itself
   * (or lets an anonymous reader through, as `auth_failure` says); `contextOf` gives the context it set.
   */
  auth: {
    preValidation: (request: FastifyRequest, reply: FastifyReply) => Promise<unknown>
    contextOf: (request: FastifyRequest) => unknown
  }
  /** Runs the join triggers; false when one refused. */
  authorizeJoin: (sub: Subscription, context: unknown) => Promise<boolean>
}

/** The message type a custom event (`send`) takes in a feed; MaterializedState ignores it. */
export const FEED_EVENT_OPERATION = 'event'
/** Seconds a reader refused for lack of room is told to wait (Retry-After). */
export const FEED_BUSY_RETRY_AFTER_S = 5

const NO_STORE = 'no-store'
const PRIVATE_NO_STORE = 'private, no-store'
const PUBLIC_CACHE = 'public, max-age=60, stale-while-revalidate=300'
const JSON_TYPE = 'application/json'

// On every feed response, errors included: the protocol's browser security headers and CORS.
const BASE_HEADERS = {
  'x-content-type-options': 'nosniff',
  'cross-origin-resource-policy': 'cross-origin',
  'access-control-allow-origin': '*',
  'access-control-expose-headers': 'Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, ETag, Retry-After'
}
const PREFLIGHT_HEADERS = {
  ...BASE_HEADERS,
  'access-control-allow-methods': 'GET, HEAD, OPTIONS',
  'access-control-allow-headers': 'Authorization, If-None-Match, Content-Type',
  'access-control-max-age': '86400'
}

type StartOffset = '-1' | 'now' | ParsedOffset

interface FeedRead {
  stream: string
  group: string
  offset: StartOffset
  /** The offset as the reader sent it (for the ETag). */
  offsetText: string
  live: 'long-poll' | 'sse' | null
  cursor: string
  limit: number
}

/**
 * The events of one group committed in one turn of the event loop, as every live reader of the group shares them
 * (SseChunks). A burst thus costs a reader one write and one control event, as the socket path's outbox does for
 * its frames.
 */
class SharedBatch {
  /** The first and last revision of the batch. */
  readonly first: number
  readonly last: number
  /** Whether the revisions follow each other without a gap: only then can a reader take the batch as it is. */
  readonly contiguous: boolean
  private readonly chunks: SseChunks

  constructor (events: StreamEvent[]) {
    this.first = events[0].rev
    this.last = events[events.length - 1].rev
    this.contiguous = this.last - this.first === events.length - 1
    this.chunks = new SseChunks(() => sseData(events.map(event => JSON.stringify(changeMessage(event.stream, event)))))
  }

  sse (token: string, cursor: string): Buffer {
    return sseChunkAt(this.chunks, token, cursor, this.last, true)
  }
}

/** A reader waiting on a group's events: a long-poll or an SSE response. */
interface LiveReader {
  /** Events of the reader's group, committed in this turn. */
  offer: (batch: SharedBatch) => void
  /** The event feed may have missed events: read the log again. */
  resync: () => void
  /** The app is closing: answer now. */
  close: () => void
}

/**
 * The live readers of one group share a room; the group's events of a turn wait in it and go out together when
 * the turn ends (the outbox flushes it).
 */
class Room implements Flushable {
  readonly readers = new Set<LiveReader>()
  private pending: StreamEvent[] = []

  add (event: StreamEvent): void {
    this.pending.push(event)
  }

  flush (): void {
    if (this.pending.length === 0) return
    const batch = new SharedBatch(this.pending)
    this.pending = []
    for (const reader of this.readers) reader.offer(batch)
  }
}

function roomKey (stream: string, group: string): string {
  return `${stream}\u0000${group}`
}

function iso (timestamp: number): string {
  return new Date(timestamp).toISOString()
}

/** One log entry as a State Protocol message; custom events are the documented `event` extension. */
export function changeMessage (stream: string, record: Pick<ChangeRecord, 'id' | 'timestamp' | 'event'>): Record<string, unknown> {
  const headers = { operation: '', timestamp: iso(record.timestamp) }
  const body = record.event
  switch (body.type) {
    case 'create':
      headers.operation = 'insert'
      return { type: stream, key: record.id, value: body.data, headers }
    case 'update':
      headers.operation = 'update'
      return { type: stream, key: record.id, value: body.data, headers }
    case 'delete':
      headers.operation = 'delete'
      return { type: stream, key: record.id, value: null, old_value: body.data, headers }
    default:
      headers.operation = FEED_EVENT_OPERATION
      return record.id === null ? { type: stream, event: body.event, headers } : { type: stream, key: record.id, event: body.event, headers }
  }
}

/** A snapshot as messages: snapshot-start, one insert per item in group order, snapshot-end. */
function snapshotMessages (stream: string, snapshot: GroupSnapshot, next: string): string[] {
  const control = (name: string) => JSON.stringify({ headers: { control: name, offset: next } })
  const messages = [control('snapshot-start')]
  for (let i = 0; i < snapshot.items.length; i++) {
    // Each item's own last-change timestamp, where the store reports it.
    const timestamp = snapshot.timestamps?.[i]
    const headers = timestamp === undefined ? { operation: 'insert' } : { operation: 'insert', timestamp: iso(timestamp) }
    messages.push(JSON.stringify({ type: stream, key: snapshot.ids[i], value: snapshot.items[i], headers }))
  }
  messages.push(control('snapshot-end'))
  return messages
}

/** One SSE data event holding the serialised messages as a JSON array (JSON text holds no line break). */
function sseData (messages: string[]): string {
  return sseEvent('data', [`[${messages.join(',')}]`])
}

/** A page of the log as messages, and once asked for, as SSE (pages of at least one change). */
interface SerialisedPage { messages: string[], sse: SseChunks | null }

/** Per page: the readers sharing one read (live.ts SharedReads) serialise it once (the readers of a reconnect storm resume at one offset). */
const serialisedPages = new WeakMap<ChangePage, SerialisedPage>()

function serialised (stream: string, page: ChangePage): SerialisedPage {
  let entry = serialisedPages.get(page)
  if (entry === undefined) {
    entry = { messages: page.changes.map(record => JSON.stringify(changeMessage(stream, record))), sse: null }
    serialisedPages.set(page, entry)
  }
  return entry
}

/** Changes ending at revision `last` with their control event, per epoch and cursor (nearly all readers of a group share them). */
function sseChunkAt (chunks: SseChunks, token: string, cursor: string, last: number, upToDate: boolean): Buffer {
  return chunks.chunk(`${token} ${cursor}`, () => sseControl(encodeOffset(token, last), cursor, upToDate))
}

/** A page of at least one change as one HTTP chunk: its data event and the control event after it. */
function sseChunk (stream: string, page: ChangePage, token: string, cursor: string): Buffer {
  const entry = serialised(stream, page)
  const last = page.changes[page.changes.length - 1].rev
  entry.sse ??= new SseChunks(() => sseData(entry.messages))
  return sseChunkAt(entry.sse, token, cursor, last, last >= page.rev)
}

/** One query parameter's value; a parameter given twice is refused (its meaning would be a guess). */
function single (query: Record<string, unknown>, key: string): string | undefined {
  const value = query[key]
  if (value === undefined) return undefined
  if (typeof value !== 'string') throw new FeedRequestError(`${key} given more than once`)
  return value
}

function parseRead (request: FastifyRequest, config: FeedsConfig, maxNameLength: number): FeedRead {
  const params = request.params as { stream: string, group: string }
  // The names the socket accepts (400, STREAMS_ERR_INVALID_NAME otherwise).
  const stream = checkName('stream', params.stream, maxNameLength)
  const group = checkName('group', params.group, maxNameLength)
  // Unknown parameters are ignored: an auth token may come as one (EventSource cannot set headers).
  const query = (request.query ?? {}) as Record<string, unknown>
  const offsetText = single(query, 'offset') ?? '-1'
  let offset: StartOffset
  if (offsetText === '-1' || offsetText === 'now') offset = offsetText
  else {
    const parsed = parseOffset(offsetText)
    if (parsed === null) throw new FeedRequestError('malformed offset')
    offset = parsed
  }
  const live = single(query, 'live')
  if (live !== undefined && live !== 'long-poll' && live !== 'sse') throw new FeedRequestError('live must be long-poll or sse')
  // `limit` (our extension) caps the changes in one response; anything above the configured page is that page.
  const limitText = single(query, 'limit')
  if (limitText !== undefined && !/^[1-9]\d*$/.test(limitText)) throw new FeedRequestError('limit must be a positive integer')
  const limit = limitText === undefined ? config.maxPageChanges : Math.min(Number(limitText), config.maxPageChanges)
  return { stream, group, offset, offsetText, live: live ?? null, cursor: nextCursor(single(query, 'cursor') ?? null), limit }
}

/** What the feeds lend the socket path. */
export interface Feeds {
  /** The offset a feed reader holds after `event` (the socket envelope's `offset`), once the store's epoch is known. */
  offsetOf: (event: StreamEvent) => string | undefined
}

/** The group read at start to learn the store's epoch (a read: nothing is written). */
const EPOCH_PROBE = ['fastify-streams', 'epoch'] as const

/** Registers the feed routes and their hooks. Call only when `options.feeds` is set. */
export function registerFeeds (app: FastifyInstance, host: FeedsHost): Feeds {
  const { adapter, options, log } = host
  const config = options.feeds as FeedsConfig
  if (typeof adapter.readChanges !== 'function') throw new InvalidAdapterError('feeds need an adapter with readChanges (a change log)')
  const readChanges = adapter.readChanges.bind(adapter)
  // Readers at one offset of a group (woken by one change, or back after a restart) share one read of the log.
  const pageReads = new SharedReads<ChangePage>()
  const readPage = (stream: string, group: string, after: number, limit: number): Promise<ChangePage> =>
    pageReads.read(roomKey(stream, group), `${after} ${limit}`, () => readChanges(stream, group, after, limit))
  // Without an auth function every reader gets the same answer for a URL, so offset reads may be cached.
  const cacheControl = options.authFunction === null ? PUBLIC_CACHE : PRIVATE_NO_STORE

  const rooms = new Map<string, Room>()
  // Feed writes wait for the end of the turn like socket frames do; one per feeds instance, not shared across apps.
  const outbox = new Outbox()
  const live = new Set<LiveReader>()
  let closing = false
  // The store's epoch as offsets carry it, refreshed by every read (a Redis that lost its data makes a new one).
  let knownEpoch: string | null = null
  const learn = (epoch: string): string => (knownEpoch = epochToken(epoch))

  function enter (key: string, reader: LiveReader, reply: FastifyReply): void {
    if (closing || live.size >= config.maxLiveReaders) {
      reply.header('retry-after', String(FEED_BUSY_RETRY_AFTER_S))
      throw new FeedBusyError()
    }
    let room = rooms.get(key)
    if (room === undefined) {
      room = new Room()
      rooms.set(key, room)
    }
    room.readers.add(reader)
    live.add(reader)
  }

  function leave (key: string, reader: LiveReader): void {
    live.delete(reader)
    const room = rooms.get(key)
    if (room === undefined) return
    room.readers.delete(reader)
    if (room.readers.size === 0) rooms.delete(key)
  }

  const stopFeed = adapter.subscribe((event) => {
    const key = roomKey(event.stream, event.group)
    pageReads.changed(key)
    const room = rooms.get(key)
    if (room === undefined) return
    room.add(event)
    outbox.add(room)
  })
  const stopResync = adapter.onResync?.(() => {
    pageReads.changedAll()
    for (const reader of live) reader.resync()
  })

  /** The group's log after `after`, or 410 when the log cannot say what came after it. */
  async function changesAfter (read: FeedRead, token: string, after: number): Promise<ChangePage> {
    const page = await readPage(read.stream, read.group, after, read.limit)
    // Another epoch, trimmed, or past the tail (the store lost what it had told): only a new snapshot helps.
    if (learn(page.epoch) !== token || after < page.trimmed || after > page.rev) throw new OffsetGoneError()
    return page
  }

  /** The group's tail: its epoch and last revision. */
  async function tail (read: Pick<FeedRead, 'stream' | 'group'>): Promise<ChangePage> {
    const page = await readPage(read.stream, read.group, Number.MAX_SAFE_INTEGER, 1)
    learn(page.epoch)
    return page
  }

  /** The snapshot for offset -1 and the epoch token its offsets take. */
  async function snapshotOf (read: FeedRead): Promise<{ snapshot: GroupSnapshot, token: string }> {
    const snapshot = await adapter.snapshotGroup(read.stream, read.group)
    return { snapshot, token: snapshot.epoch === undefined ? learn((await tail(read)).epoch) : learn(snapshot.epoch) }
  }

  /**
   * After the auth (401, in preValidation): checks the request (400), runs the join triggers (403). None of them
   * reads the group, so the answers are the same for every group.
   */
  async function admit (request: FastifyRequest): Promise<FeedRead> {
    const read = parseRead(request, config, options.maxNameLength)
    const sub: Subscription = { subscriptionId: randomUUID(), streamName: read.stream, groupId: read.group, id: null }
    if (!(await host.authorizeJoin(sub, host.auth.contextOf(request)))) throw new ForbiddenError()
    if (closing) throw new FeedBusyError()
    return read
  }

  function sendJson (reply: FastifyReply, read: FeedRead, messages: string[], next: string, upToDate: boolean, cache: string): FastifyReply {
    reply.header('content-type', JSON_TYPE).header('stream-next-offset', next).header('cache-control', cache)
    if (upToDate) reply.header('stream-up-to-date', 'true')
    if (read.live !== null) reply.header('stream-cursor', read.cursor)
    if (read.offset !== 'now') {
      const etag = `"${read.offsetText}:${next}"`
      reply.header('etag', etag)
      const match = reply.request.headers['if-none-match']
      if (match !== undefined && match.split(',').some(tag => tag.trim() === etag)) return reply.code(304).send()
    }
    return reply.code(200).send(`[${messages.join(',')}]`)
  }

  function sendPage (reply: FastifyReply, read: FeedRead, token: string, after: number, page: ChangePage): FastifyReply {
    const last = page.changes.length === 0 ? after : page.changes[page.changes.length - 1].rev
    return sendJson(reply, read, serialised(read.stream, page).messages, encodeOffset(token, last), last >= page.rev, cacheControl)
  }

  /** A long-poll with nothing to answer yet: waits for an event of the group, then reads the log again. */
  async function longPoll (reply: FastifyReply, read: FeedRead, token: string, after: number): Promise<FastifyReply | undefined> {
    const key = roomKey(read.stream, read.group)
    let woken = false
    let timedOut = false
    let wake: (() => void) | null = null
    const rouse = () => { woken = true; wake?.() }
    const reader: LiveReader = { offer: (batch) => { if (batch.last > after) rouse() }, resync: rouse, close: rouse }
    enter(key, reader, reply)
    const timer = setTimeout(() => { timedOut = true; rouse() }, config.longPollTimeoutMs).unref()
    reply.raw.once('close', rouse)
    try {
      while (true) {
        woken = false
        const page = await changesAfter(read, token, after)
        if (page.changes.length > 0) return sendPage(reply, read, token, after, page)
        if (!woken) await new Promise<void>(resolve => { wake = resolve })
        wake = null
        if (reply.raw.destroyed) {
          reply.hijack()
          return
        }
        if (closing || timedOut) {
          return reply.code(204).header('stream-next-offset', encodeOffset(token, after)).header('stream-up-to-date', 'true')
            .header('stream-cursor', read.cursor).send()
        }
      }
    } finally {
      clearTimeout(timer)
      reply.raw.off('close', rouse)
      leave(key, reader)
    }
  }

  /** An SSE response: the first page (or snapshot), then every change as it commits, until the time cap. */
  async function serveSse (reply: FastifyReply, read: FeedRead): Promise<void> {
    const key = roomKey(read.stream, read.group)
    const res: ServerResponse = reply.raw
    const writer = new SseWriter(res)
    let token = ''
    let sent = 0
    let catching = true // until the first page is out, events only mark the reader dirty
    let dirty = false
    let ended = false

    const end = (destroy = false) => {
      if (ended) return
      ended = true
      leave(key, reader)
      if (destroy) res.destroy()
      else res.end()
    }
    const send = (chunk: Buffer, rev: number) => {
      sent = rev
      if (ended) return
      writer.write(chunk)
      // A reader that stopped reading: drop it (it resumes from its offset) rather than buffer without bound.
      if (writer.buffered > options.maxBufferedBytes) end(true)
    }

    /** Reads the log after what was sent until nothing is left; events arriving meanwhile make it go round again. */
    const drain = async () => {
      try {
        for (;;) {
          dirty = false
          const page = await changesAfter(read, token, sent)
          if (ended) return
          if (page.changes.length > 0) {
            const last = page.changes[page.changes.length - 1].rev
            send(sseChunk(read.stream, page, token, read.cursor), last)
            if (last < page.rev) dirty = true
          }
          if (!dirty || ended) return
        }
      } catch (err) {
        // 410 or a store failure: end; the reader's reconnect gets the answer as a status.
        if (!(err instanceof OffsetGoneError)) log.warn({ err }, 'fastify-streams: feed read failed')
        end()
      }
    }
    const catchUp = async () => {
      if (catching) {
        dirty = true
        return
      }
      catching = true
      await drain()
      catching = false
    }

    const reader: LiveReader = {
      offer: (batch) => {
        if (catching) dirty = true
        else if (batch.contiguous && batch.first === sent + 1) send(batch.sse(token, read.cursor), batch.last)
        else if (batch.last > sent) catchUp().catch(() => {})
      },
      resync: () => { catchUp().catch(() => {}) },
      close: () => end()
    }

    // Joined before the first read, so nothing committed after it is missed; refusals still answer a status.
    enter(key, reader, reply)
    let first: Buffer
    try {
      if (read.offset === '-1') {
        const { snapshot, token: snapshotToken } = await snapshotOf(read)
        token = snapshotToken
        sent = snapshot.rev
        first = httpChunk(sseData(snapshotMessages(read.stream, snapshot, encodeOffset(token, sent))) +
          sseControl(encodeOffset(token, sent), read.cursor, true))
      } else if (read.offset === 'now') {
        const page = await tail(read)
        token = learn(page.epoch)
        sent = page.rev
        first = httpChunk(sseControl(encodeOffset(token, sent), read.cursor, true))
      } else {
        token = read.offset.epoch
        const page = await changesAfter(read, token, read.offset.rev)
        const last = page.changes.length === 0 ? read.offset.rev : page.changes[page.changes.length - 1].rev
        sent = last
        dirty = last < page.rev
        first = page.changes.length > 0 ? sseChunk(read.stream, page, token, read.cursor) : httpChunk(sseControl(encodeOffset(token, last), read.cursor, last >= page.rev))
      }
    } catch (err) {
      leave(key, reader)
      throw err
    }

    reply.hijack()
    writer.start({ ...BASE_HEADERS, 'content-type': 'text/event-stream', 'cache-control': NO_STORE, 'x-accel-buffering': 'no' })
    // The protocol's periodic close, so CDNs can collapse readers; the reader reconnects from its offset.
    const timer = setTimeout(() => end(), config.sseMaxDurationMs).unref()
    res.on('close', () => {
      clearTimeout(timer)
      end()
    })
    send(first, sent)
    catching = false
    if (dirty) await catchUp()
  }

  const route = `${config.path}/:stream/:group`
  // Before the auth, so a 401 carries them too.
  const headersFirst = async (_request: FastifyRequest, reply: FastifyReply) => { reply.headers(BASE_HEADERS).header('cache-control', NO_STORE) }

  app.route({
    method: 'GET',
    url: route,
    exposeHeadRoute: false,
    onRequest: headersFirst,
    preValidation: host.auth.preValidation,
    handler: async (request, reply) => {
      const read = await admit(request)
      if (read.live === 'sse') return await serveSse(reply, read)
      if (read.offset === '-1') {
        const { snapshot, token } = await snapshotOf(read)
        const next = encodeOffset(token, snapshot.rev)
        return sendJson(reply, read, snapshotMessages(read.stream, snapshot, next), next, true, NO_STORE)
      }
      if (read.offset === 'now') {
        const page = await tail(read)
        const token = learn(page.epoch)
        if (read.live === 'long-poll') return await longPoll(reply, read, token, page.rev)
        return sendJson(reply, read, [], encodeOffset(token, page.rev), true, NO_STORE)
      }
      const { epoch: token, rev: after } = read.offset
      if (read.live === 'long-poll') return await longPoll(reply, read, token, after)
      return sendPage(reply, read, token, after, await changesAfter(read, token, after))
    }
  })

  app.route({
    method: 'HEAD',
    url: route,
    onRequest: headersFirst,
    preValidation: host.auth.preValidation,
    handler: async (request, reply) => {
      const read = await admit(request)
      const page = await tail(read)
      return reply.header('content-type', JSON_TYPE).header('stream-next-offset', encodeOffset(learn(page.epoch), page.rev)).send()
    }
  })

  app.route({
    method: 'OPTIONS',
    url: route,
    handler: async (_request, reply) => reply.code(204).headers(PREFLIGHT_HEADERS).send()
  })

  app.route({
    method: ['POST', 'PUT', 'PATCH', 'DELETE'],
    url: route,
    onRequest: headersFirst,
    handler: async (_request, reply) => {
      reply.header('allow', 'GET, HEAD, OPTIONS')
      throw new FeedMethodError()
    }
  })

  app.addHook('onReady', async () => {
    await tail({ stream: EPOCH_PROBE[0], group: EPOCH_PROBE[1] })
  })
  app.addHook('preClose', async () => {
    closing = true
    for (const reader of [...live]) reader.close()
  })
  app.addHook('onClose', async () => {
    stopFeed()
    stopResync?.()
  })

  return { offsetOf: (event) => knownEpoch === null ? undefined : encodeOffset(knownEpoch, event.rev) }
}
