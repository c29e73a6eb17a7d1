// Durable streams in process memory: gone with the process, like the memory adapter's items.
// Every operation runs synchronously once called, so each is atomic with respect to the others.
import { randomUUID } from 'node:crypto'
import { StreamConflictError, StreamGoneError, StreamNotFoundError, StreamRequestError } from '../errors.js'
import {
  checkSameConfig, decideAppend, expiryTime, isJsonType, jsonMessages, mediaType,
  type AppendRequest, type AppendResult, type CreateRequest, type CreateResult, type DurableStreamStore, type Payload,
  type Position, type ProducerClaim, type ProducerState, type ReadResult, type StreamConfig, type StreamInfo
} from './store.js'

const DEFAULT_CONTENT_TYPE = 'application/octet-stream'
/** How often expired streams nobody asked about are dropped. */
const SWEEP_INTERVAL_MS = 60_000

/** One append (a batch of messages in JSON mode) at `start`. */
interface Entry { start: Position, end: Position, payload: Payload }

interface MemoryStream extends StreamConfig {
  name: string
  id: string
  touchedAt: number
  closed: boolean
  closedBy: ProducerClaim | null
  lastStreamSeq: string | null
  producers: Map<string, ProducerState>
  /** A fork reads its source below `base`; its own entries start there. */
  parent: MemoryStream | null
  base: Position
  entries: Entry[]
  tail: Position
  /** Forks reading this stream: a deleted or expired stream with forks is kept, answering 410. */
  forks: number
  gone: boolean
}

function payloadSize (payload: Payload): number {
  return payload.kind === 'bytes' ? payload.bytes.length : payload.messages.length
}

/** The part [from, to) of an entry, in its own positions. */
function slice (entry: Entry, from: Position, to: Position): Payload {
  const a = from - entry.start
  const b = to - entry.start
  return entry.payload.kind === 'bytes'
    ? { kind: 'bytes', bytes: entry.payload.bytes.subarray(a, b) }
    : { kind: 'json', messages: entry.payload.messages.slice(a, b) }
}

/** Index of the entry holding `position` (entries are sorted and contiguous), or -1. */
function entryAt (entries: Entry[], position: Position): number {
  let low = 0
  let high = entries.length - 1
  while (low <= high) {
    const middle = (low + high) >> 1
    const entry = entries[middle]
    if (position < entry.start) high = middle - 1
    else if (position >= entry.end) low = middle + 1
    else return middle
  }
  return -1
}

/** The entry holding `position` as `stream` sees it (a fork sees its source's entries below its base). */
function visibleEntry (stream: MemoryStream, position: Position): Entry | null {
  if (position < stream.base && stream.parent !== null) {
    const entry = visibleEntry(stream.parent, position)
    return entry === null ? null : { ...entry, end: Math.min(entry.end, stream.base) }
  }
  const index = entryAt(stream.entries, position)
  return index < 0 ? null : stream.entries[index]
}

export class MemoryDurableStore implements DurableStreamStore {
  private readonly streams = new Map<string, MemoryStream>()
  private readonly watchers = new Map<string, Set<() => void>>()
  private readonly sweeper: NodeJS.Timeout

  constructor (private readonly now: () => number = Date.now) {
    this.sweeper = setInterval(() => this.sweep(), SWEEP_INTERVAL_MS)
    this.sweeper.unref()
  }

  async create (name: string, request: CreateRequest): Promise<CreateResult> {
    const existing = this.lookup(name)
    if (existing !== null && existing.gone) throw new StreamConflictError('a deleted stream with live forks keeps its name')
    const source = request.fork === null ? null : this.live(request.fork.source)
    if (source !== null && source.gone) throw new StreamConflictError('the fork source is deleted')
    const fork = source === null ? null : this.forkPoint(source, request)
    if (existing !== null) {
      checkSameConfig(existing, request, fork)
      return { created: false, info: this.info(existing) }
    }
    const contentType = request.contentType ?? source?.contentType ?? DEFAULT_CONTENT_TYPE
    if (source !== null && mediaType(contentType) !== mediaType(source.contentType)) {
      throw new StreamConflictError('a fork keeps its source\'s content type')
    }
    const inherit = source !== null && request.ttlSeconds === null && request.expiresAt === null
    const base = fork?.offset ?? 0
    const stream: MemoryStream = {
      name,
      id: randomUUID(),
      contentType,
      ttlSeconds: inherit ? source.ttlSeconds : request.ttlSeconds,
      expiresAt: inherit ? source.expiresAt : request.expiresAt,
      fork,
      touchedAt: this.now(),
      closed: false,
      closedBy: null,
      lastStreamSeq: null,
      producers: new Map(),
      parent: source,
      base,
      entries: [],
      tail: base,
      forks: 0,
      gone: false
    }
    const initial: Payload = isJsonType(contentType)
      ? { kind: 'json', messages: jsonMessages(request.body, true) }
      : { kind: 'bytes', bytes: request.body }
    if (source !== null) source.forks++
    this.streams.set(name, stream)
    this.push(stream, initial)
    stream.closed = request.closed
    return { created: true, info: this.info(stream) }
  }

  async append (name: string, request: AppendRequest): Promise<AppendResult> {
    const stream = this.existing(name)
    const claim = request.producer
    const decision = decideAppend({
      contentType: stream.contentType,
      closed: stream.closed,
      closedBy: stream.closedBy,
      lastStreamSeq: stream.lastStreamSeq,
      tail: stream.tail,
      producer: claim === null ? null : stream.producers.get(claim.id) ?? null
    }, request)
    stream.touchedAt = this.now()
    if (decision.kind === 'duplicate') return { info: this.info(stream), outcome: 'duplicate', producer: decision.producer }
    if (decision.payload !== null) this.push(stream, decision.payload)
    if (claim !== null && decision.producer !== null) stream.producers.set(claim.id, decision.producer)
    if (request.streamSeq !== null && decision.payload !== null) stream.lastStreamSeq = request.streamSeq
    if (decision.close) {
      stream.closed = true
      stream.closedBy = claim
    }
    if (decision.payload !== null || decision.close) this.notify(name)
    return { info: this.info(stream), outcome: 'appended', producer: decision.producer }
  }

  async head (name: string): Promise<StreamInfo> {
    return this.info(this.existing(name))
  }

  async read (name: string, from: Position | null, maxBytes: number): Promise<ReadResult> {
    const stream = this.existing(name)
    stream.touchedAt = this.now()
    const start = from ?? stream.tail
    if (start > stream.tail) throw new StreamRequestError('the offset is beyond the end of the stream')
    const json = isJsonType(stream.contentType)
    const parts: Buffer[] = []
    const messages: string[] = []
    let position = start
    let bytes = 0
    while (position < stream.tail) {
      const entry = visibleEntry(stream, position)
      if (entry === null) break
      let end = entry.end
      if (!json) end = Math.min(end, position + Math.max(1, maxBytes - bytes))
      const part = slice(entry, position, end)
      if (part.kind === 'bytes') {
        parts.push(part.bytes)
        bytes += part.bytes.length
      } else {
        // Whole messages only, at least one per read.
        let taken = 0
        for (const message of part.messages) {
          if (messages.length > 0 && bytes + message.length > maxBytes) break
          messages.push(message)
          bytes += message.length
          taken++
        }
        end = position + taken
        if (taken < part.messages.length) {
          position = end
          break
        }
      }
      position = end
      if (bytes >= maxBytes) break
    }
    const payload: Payload = json ? { kind: 'json', messages } : { kind: 'bytes', bytes: parts.length === 1 ? parts[0] : Buffer.concat(parts) }
    return { info: this.info(stream), from: start, next: position, payload }
  }

  async delete (name: string): Promise<void> {
    const stream = this.existing(name)
    this.drop(stream)
    this.notify(name)
  }

  watch (name: string, listener: () => void): () => void {
    let set = this.watchers.get(name)
    if (set === undefined) this.watchers.set(name, set = new Set())
    set.add(listener)
    return () => {
      set.delete(listener)
      if (set.size === 0 && this.watchers.get(name) === set) this.watchers.delete(name)
    }
  }

  async close (): Promise<void> {
    clearInterval(this.sweeper)
    this.watchers.clear()
  }

  private info (stream: MemoryStream): StreamInfo {
    return {
      id: stream.id,
      contentType: stream.contentType,
      tail: stream.tail,
      closed: stream.closed,
      ttlSeconds: stream.ttlSeconds,
      expiresAt: stream.expiresAt
    }
  }

  private push (stream: MemoryStream, payload: Payload): void {
    const size = payloadSize(payload)
    if (size === 0) return
    stream.entries.push({ start: stream.tail, end: stream.tail + size, payload })
    stream.tail += size
  }

  /** The fork point a PUT asks for, checked against the source (sub-offsets count within one append). */
  private forkPoint (source: MemoryStream, request: CreateRequest): NonNullable<StreamConfig['fork']> {
    const fork = request.fork!
    const offset = fork.offset ?? source.tail
    if (offset > source.tail) throw new StreamRequestError('the fork offset is beyond the end of the source')
    if (fork.subOffset > 0) {
      const entry = visibleEntry(source, offset)
      if (entry === null || fork.subOffset > entry.end - offset) throw new StreamRequestError('the fork sub-offset is beyond the append at the fork offset')
    }
    return { source: source.name, offset: offset + fork.subOffset, subOffset: fork.subOffset }
  }

  /** The stream under `name` after applying expiry, or null when there is none. */
  private lookup (name: string): MemoryStream | null {
    const stream = this.streams.get(name)
    if (stream === undefined) return null
    if (!stream.gone) {
      const expiry = expiryTime(stream, stream.touchedAt)
      if (expiry !== null && this.now() >= expiry) {
        this.drop(stream)
        this.notify(name)
        return this.streams.get(name) ?? null
      }
    }
    return stream
  }

  private live (name: string): MemoryStream {
    const stream = this.lookup(name)
    if (stream === null) throw new StreamNotFoundError()
    return stream
  }

  private existing (name: string): MemoryStream {
    const stream = this.live(name)
    if (stream.gone) throw new StreamGoneError()
    return stream
  }

  /** Deletes a stream: kept as gone while forks read it; otherwise removed, releasing its own source. */
  private drop (stream: MemoryStream): void {
    if (stream.forks > 0) {
      stream.gone = true
      return
    }
    if (this.streams.get(stream.name) === stream) this.streams.delete(stream.name)
    const parent = stream.parent
    if (parent !== null) {
      parent.forks--
      if (parent.gone && parent.forks === 0) this.drop(parent)
    }
  }

  private notify (name: string): void {
    const set = this.watchers.get(name)
    if (set === undefined) return
    for (const listener of [...set]) listener()
  }

  private sweep (): void {
    for (const name of [...this.streams.keys()]) {
      this.lookup(name)
    }
  }
}
