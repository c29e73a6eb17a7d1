// The durable stream operations over any StreamBackend: creation and forks, appends under the protocol's
// rules, chunked reads across fork chains, expiry, deletion with fork reference counts. A backend only
// stores rows and entries and runs each operation alone and atomically.
import { randomUUID } from 'node:crypto'
import { StreamConflictError, StreamGoneError, StreamNotFoundError, StreamRequestError } from '../errors.js'
import {
  DEFAULT_CONTENT_TYPE, EMPTY_JSON, LINE_BREAK, checkSameConfig, decideAppend, expiryTime, isJsonType, joinLines, jsonPayload, mediaType, messageBytes,
  type AppendRequest, type AppendResult, type CreateRequest, type CreateResult, type DurableStreamStore, type JsonPayload, type Payload,
  type Position, type ProducerClaim, type ProducerState, type ReadResult, type StreamConfig, type StreamInfo
} from './store.js'

/** How often expired streams nobody asked about are dropped. */
const SWEEP_INTERVAL_MS = 60_000

/** A stream as a backend keeps it. A fork reads its source (`parentId`) below `base`; its own entries start there. */
export interface StoredStream extends StreamConfig {
  name: string
  id: string
  touchedAt: number
  closedBy: ProducerClaim | null
  lastStreamSeq: string | null
  parentId: string | null
  base: Position
  tail: Position
  /** Forks reading this stream: a deleted or expired stream with forks is kept, answering 410. */
  forks: number
  gone: boolean
}

/** One append (a batch of messages in JSON mode) covering [start, end). */
export interface StoredEntry { start: Position, end: Position, payload: Payload }

/** A payload as a backend stores it: bytes, JSON messages one per line. */
export function payloadBytes (payload: Payload): Buffer {
  return payload.kind === 'bytes' ? payload.bytes : payload.lines
}

/** A stored payload back (`json`: it holds `count` JSON messages, one per line). */
export function storedPayload (bytes: Buffer, json: boolean, count: number): Payload {
  return json ? { kind: 'json', lines: bytes, count } : { kind: 'bytes', bytes }
}

/** A value, or a promise of it: an in-memory backend answers at once, a storage backend later. */
export type Awaitable<T> = T | Promise<T>

/** A backend's reads and writes within one operation (every method may answer at once or by a promise). */
export interface StreamTransaction {
  /** The stream currently under `name`, gone or not. */
  stream (name: string): Awaitable<StoredStream | null>
  streamById (id: string): Awaitable<StoredStream | null>
  /** Inserts or updates the stream's row. */
  put (stream: StoredStream): Awaitable<void>
  /** Removes the stream's row, entries and producer states. */
  remove (stream: StoredStream): Awaitable<void>
  /** Entries of stream `id` overlapping [from, to), in order, until their sizes reach `maxBytes` (at least one). */
  entries (id: string, from: Position, to: Position, maxBytes: number): Awaitable<StoredEntry[]>
  addEntry (id: string, entry: StoredEntry): Awaitable<void>
  producer (id: string, producerId: string): Awaitable<ProducerState | null>
  setProducer (id: string, producerId: string, state: ProducerState): Awaitable<void>
}

export interface StreamBackend {
  /**
   * Runs `work` atomically (on a throw, nothing it wrote stays) and isolated from every other operation that
   * touches the same streams; `name` is the stream the operation is about (a backend may run operations on
   * different streams at once). A backend may run `work` more than once (an optimistic retry): it must
   * only read and write through `tx`. An append (`appendBytes`: the size of its body) reads no entries: a
   * backend may run it in one transaction with other appends to the same stream.
   */
  run<T> (name: string, work: (tx: StreamTransaction) => Promise<T>, appendBytes?: number): Promise<T>
  /** Names of every stored stream (for the expiry sweep). */
  names (): Promise<string[]>
  /** Tells the watchers of `name`, on every node sharing the backend, that it changed. */
  publish (name: string): void
  /** Registers the listener of every published change (local and from other nodes); null: any stream may have changed. */
  onChange (listener: (name: string | null) => void): () => void
  close (): Promise<void>
}

/** An operation waiting for the next transaction (of a group), and how to answer it once that is committed. */
export interface WaitingOperation {
  work: (tx: StreamTransaction) => Promise<unknown>
  resolve: (value: unknown) => void
  reject: (err: unknown) => void
}

/**
 * Operations handed in together share one transaction (a group commit), this many and this many bytes of
 * appends at most (one append alone may be bigger): the first of a group is not kept waiting for gigabytes
 * behind it, and one Redis script call stays far below what Redis takes.
 */
export const MAX_GROUP_OPERATIONS = 256
export const MAX_GROUP_APPEND_BYTES = 8 * 1024 * 1024

/** Operations gathering for one transaction, and the bytes of their appends. */
export class OperationGroup {
  readonly operations: WaitingOperation[] = []
  private bytes = 0

  /** Takes `operation` (`appendBytes`: its body's size) unless the group is full; an empty group takes any. */
  add (operation: WaitingOperation, appendBytes: number): boolean {
    const count = this.operations.length
    if (count > 0 && (count >= MAX_GROUP_OPERATIONS || this.bytes + appendBytes > MAX_GROUP_APPEND_BYTES)) return false
    this.operations.push(operation)
    this.bytes += appendBytes
    return true
  }
}

export type Outcome = { ok: true, value: unknown } | { ok: false, error: unknown }

/** A transaction that can take back what one operation of a group wrote. */
export interface GroupTransaction<Mark> extends StreamTransaction {
  /** Where the next operation starts (what the operations before it wrote stays). */
  mark (): Mark
  /** Drops what was written since `mark`. */
  rollback (mark: Mark): void
}

/**
 * Runs a group's operations one after another in `tx`: one that throws leaves nothing written and gets its
 * error as its outcome, unless `fatal(error)`: then the whole group fails with it (thrown).
 */
export async function runOperations<Mark> (group: WaitingOperation[], tx: GroupTransaction<Mark>, fatal: (error: unknown) => boolean): Promise<Outcome[]> {
  const outcomes: Outcome[] = []
  for (const operation of group) {
    const mark = tx.mark()
    try {
      outcomes.push({ ok: true, value: await operation.work(tx) })
    } catch (error) {
      if (fatal(error)) throw error
      tx.rollback(mark)
      outcomes.push({ ok: false, error })
    }
  }
  return outcomes
}

/** Answers each operation of a committed group with its own outcome. */
export function answer (group: WaitingOperation[], outcomes: Outcome[]): void {
  group.forEach((operation, index) => {
    const outcome = outcomes[index]
    if (outcome.ok) operation.resolve(outcome.value)
    else operation.reject(outcome.error)
  })
}

/** What every backend shares: one operation at a time in this process (if it wants), and the listeners of changes. */
export abstract class SerialBackend {
  private readonly listeners = new Set<(name: string | null) => void>()
  private queue: Promise<unknown> = Promise.resolve()

  /** Runs `task` once every earlier task settled. */
  protected serial<T> (task: () => Promise<T>): Promise<T> {
    const result = this.queue.then(task)
    this.queue = result.catch(() => {})
    return result
  }

  /** Waits for the running tasks, then forgets the listeners (closing). */
  protected async settle (): Promise<void> {
    this.listeners.clear()
    await this.queue
  }

  /** Tells this process's listeners that `name` (null: any stream) changed. */
  protected emit (name: string | null): void {
    for (const listener of [...this.listeners]) listener(name)
  }

  onChange (listener: (name: string | null) => void): () => void {
    this.listeners.add(listener)
    return () => { this.listeners.delete(listener) }
  }
}

/** The first spans whose sizes add up to `maxBytes` (at least one): what a read loads at once. */
export function withinBudget<T extends { size: number }> (spans: T[], maxBytes: number): T[] {
  let weight = 0
  let count = 0
  while (count < spans.length && (count === 0 || weight < maxBytes)) weight += spans[count++].size
  return spans.slice(0, count)
}

function entrySize (payload: Payload): number {
  return payload.kind === 'bytes' ? payload.bytes.length : payload.count
}

/** Where the line `skip` lines after the one starting at `index` starts; past the end: length + 1. */
function lineAfter (lines: Buffer, index: number, skip: number): number {
  for (let k = 0; k < skip; k++) {
    const newline = lines.indexOf(LINE_BREAK, index)
    if (newline < 0) return lines.length + 1
    index = newline + 1
  }
  return index
}

/** The messages [a, b) of a JSON payload. */
function jsonSlice (payload: JsonPayload, a: number, b: number): JsonPayload {
  if (a === 0 && b === payload.count) return payload
  if (b <= a) return EMPTY_JSON
  const from = lineAfter(payload.lines, 0, a)
  return { kind: 'json', lines: payload.lines.subarray(from, lineAfter(payload.lines, from, b - a) - 1), count: b - a }
}

/** The part [from, to) of an entry. */
function slice (entry: StoredEntry, from: Position, to: Position): Payload {
  const a = from - entry.start
  const b = to - entry.start
  return entry.payload.kind === 'bytes'
    ? { kind: 'bytes', bytes: entry.payload.bytes.subarray(a, b) }
    : jsonSlice(entry.payload, a, b)
}

function info (stream: StoredStream): StreamInfo {
  return { id: stream.id, contentType: stream.contentType, tail: stream.tail, closed: stream.closed, ttlSeconds: stream.ttlSeconds, expiresAt: stream.expiresAt }
}

export class StreamEngine implements DurableStreamStore {
  private readonly watchers = new Map<string, Set<() => void>>()
  private readonly stopChanges: () => void
  private readonly sweeper: NodeJS.Timeout

  constructor (private readonly backend: StreamBackend, private readonly now: () => number = Date.now) {
    this.stopChanges = backend.onChange((name) => {
      const sets = name === null ? [...this.watchers.values()] : [this.watchers.get(name) ?? new Set<() => void>()]
      for (const set of sets) for (const listener of [...set]) listener()
    })
    this.sweeper = setInterval(() => { this.sweep().catch(() => {}) }, SWEEP_INTERVAL_MS)
    this.sweeper.unref()
  }

  async create (name: string, request: CreateRequest): Promise<CreateResult> {
    return this.run(name, async (tx, changed) => {
      const existing = await this.lookup(tx, name, changed)
      if (existing !== null && existing.gone) throw new StreamConflictError('a deleted stream with live forks keeps its name')
      // An existing stream answers first, whatever became of a fork's source since.
      if (existing !== null) {
        checkSameConfig(existing, request)
        return { created: false, info: info(existing) }
      }
      const source = request.fork === null ? null : await this.lookup(tx, request.fork.source, changed)
      if (request.fork !== null && source === null) throw new StreamNotFoundError()
      if (source !== null && source.gone) throw new StreamConflictError('the fork source is deleted')
      const fork = source === null ? null : await this.forkPoint(tx, source, request)
      const contentType = request.contentType ?? source?.contentType ?? DEFAULT_CONTENT_TYPE
      if (source !== null && mediaType(contentType) !== mediaType(source.contentType)) {
        throw new StreamConflictError('a fork keeps its source\'s content type')
      }
      const initial: Payload = isJsonType(contentType)
        ? jsonPayload(request.body, true)
        : { kind: 'bytes', bytes: request.body }
      const inherit = source !== null && request.ttlSeconds === null && request.expiresAt === null
      const base = fork?.offset ?? 0
      const stream: StoredStream = {
        name,
        id: randomUUID(),
        contentType,
        ttlSeconds: inherit ? source.ttlSeconds : request.ttlSeconds,
        expiresAt: inherit ? source.expiresAt : request.expiresAt,
        fork,
        touchedAt: this.now(),
        closed: request.closed,
        closedBy: null,
        lastStreamSeq: null,
        parentId: source?.id ?? null,
        base,
        tail: base,
        forks: 0,
        gone: false
      }
      if (source !== null) {
        source.forks++
        await tx.put(source)
      }
      await tx.put(stream)
      if (entrySize(initial) > 0) {
        await this.push(tx, stream, initial)
        await tx.put(stream)
      }
      return { created: true, info: info(stream) }
    })
  }

  async append (name: string, request: AppendRequest): Promise<AppendResult> {
    const result = await this.run(name, async (tx, changed) => {
      const stream = await this.existing(tx, name, changed)
      const claim = request.producer
      const known = claim === null ? null : await tx.producer(stream.id, claim.id)
      const decision = decideAppend(stream, known, request)
      stream.touchedAt = this.now()
      if (decision.kind === 'duplicate') {
        if (stream.ttlSeconds !== null) await tx.put(stream)
        return { info: info(stream), outcome: 'duplicate' as const, producer: decision.producer, changed: false }
      }
      if (decision.payload !== null) await this.push(tx, stream, decision.payload)
      if (claim !== null && decision.producer !== null) await tx.setProducer(stream.id, claim.id, decision.producer)
      if (request.streamSeq !== null && decision.payload !== null) stream.lastStreamSeq = request.streamSeq
      if (decision.close) {
        stream.closed = true
        stream.closedBy = claim
      }
      await tx.put(stream)
      return { info: info(stream), outcome: 'appended' as const, producer: decision.producer, changed: decision.payload !== null || decision.close }
    }, request.body.length)
    if (result.changed) this.backend.publish(name)
    return { info: result.info, outcome: result.outcome, producer: result.producer }
  }

  async head (name: string): Promise<StreamInfo> {
    return this.run(name, async (tx, changed) => info(await this.existing(tx, name, changed)))
  }

  async read (name: string, from: Position | null, maxBytes: number): Promise<ReadResult> {
    return this.run(name, async (tx, changed) => {
      const stream = await this.existing(tx, name, changed)
      if (stream.ttlSeconds !== null) {
        stream.touchedAt = this.now()
        await tx.put(stream)
      }
      const start = from ?? stream.tail
      if (start > stream.tail) throw new StreamRequestError('the offset is beyond the end of the stream')
      const json = isJsonType(stream.contentType)
      const parts: Buffer[] = []
      // JSON: the lines taken from each entry, and how many messages they hold.
      const pieces: Buffer[] = []
      let count = 0
      let position = start
      let bytes = 0
      // Full once the budget is spent or the next message does not fit in it.
      let full = false
      while (!full && position < stream.tail) {
        const { owner, limit } = await this.owner(tx, stream, position)
        const entries = await tx.entries(owner.id, position, limit, maxBytes - bytes)
        if (entries.length === 0) break
        for (const entry of entries) {
          let end = Math.min(entry.end, limit)
          if (!json) end = Math.min(end, position + Math.max(1, maxBytes - bytes))
          const part = slice(entry, position, end)
          if (part.kind === 'bytes') {
            parts.push(part.bytes)
            bytes += part.bytes.length
          } else {
            // Whole messages only, at least one per read; a part that fits whole is taken without looking into it.
            const { lines } = part
            const partBytes = messageBytes(part)
            let taken = 0
            let at = 0
            if (part.count > 0 && bytes + partBytes <= maxBytes) {
              taken = part.count
              bytes += partBytes
            }
            while (taken < part.count) {
              const newline = lines.indexOf(LINE_BREAK, at)
              const length = (newline < 0 ? lines.length : newline) - at
              if (count + taken > 0 && bytes + length > maxBytes) break
              bytes += length
              taken++
              at += length + 1
            }
            if (taken > 0) pieces.push(taken === part.count ? lines : lines.subarray(0, at - 1))
            count += taken
            end = position + taken
          }
          position = end
          full = bytes >= maxBytes || end < Math.min(entry.end, limit)
          if (full) break
        }
      }
      const payload: Payload = json ? { kind: 'json', lines: joinLines(pieces), count } : { kind: 'bytes', bytes: parts.length === 1 ? parts[0] : Buffer.concat(parts) }
      return { info: info(stream), from: start, next: position, payload }
    })
  }

  async delete (name: string): Promise<void> {
    await this.run(name, async (tx, changed) => {
      await this.drop(tx, await this.existing(tx, name, changed))
      changed.push(name)
    })
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
    this.stopChanges()
    this.watchers.clear()
    await this.backend.close()
  }

  /**
   * Runs an operation on the backend; once it settled, tells the watchers of the streams it deleted or expired
   * (`changed`, filled by the operation; started afresh when the backend runs the operation again).
   */
  private async run<T> (name: string, work: (tx: StreamTransaction, changed: string[]) => Promise<T>, appendBytes?: number): Promise<T> {
    let changed: string[] = []
    try {
      return await this.backend.run(name, async (tx) => {
        changed = []
        return work(tx, changed)
      }, appendBytes)
    } finally {
      for (const gone of changed) this.backend.publish(gone)
    }
  }

  /** The stream holding `position` as `stream` sees it, and where that view of it ends. */
  private async owner (tx: StreamTransaction, stream: StoredStream, position: Position): Promise<{ owner: StoredStream, limit: Position }> {
    let owner = stream
    let limit = stream.tail
    while (position < owner.base && owner.parentId !== null) {
      limit = Math.min(limit, owner.base)
      const parent = await tx.streamById(owner.parentId)
      if (parent === null) break
      owner = parent
    }
    return { owner, limit }
  }

  private async push (tx: StreamTransaction, stream: StoredStream, payload: Payload): Promise<void> {
    const size = entrySize(payload)
    if (size === 0) return
    await tx.addEntry(stream.id, { start: stream.tail, end: stream.tail + size, payload })
    stream.tail += size
  }

  /** The fork point a PUT asks for, checked against the source (a sub-offset counts within one append). */
  private async forkPoint (tx: StreamTransaction, source: StoredStream, request: CreateRequest): Promise<NonNullable<StreamConfig['fork']>> {
    const fork = request.fork!
    const offset = fork.offset ?? source.tail
    if (offset > source.tail) throw new StreamRequestError('the fork offset is beyond the end of the source')
    if (fork.subOffset > 0) {
      const { owner, limit } = await this.owner(tx, source, offset)
      const [entry] = offset < limit ? await tx.entries(owner.id, offset, limit, 1) : []
      if (entry === undefined || fork.subOffset > Math.min(entry.end, limit) - offset) {
        throw new StreamRequestError('the fork sub-offset is beyond the append at the fork offset')
      }
    }
    return { source: source.name, offset: offset + fork.subOffset, subOffset: fork.subOffset }
  }

  /** The stream under `name` after applying its expiry (an expired one is dropped and listed in `changed`), or null. */
  private async lookup (tx: StreamTransaction, name: string, changed: string[]): Promise<StoredStream | null> {
    const stream = await tx.stream(name)
    if (stream === null || stream.gone) return stream
    const expiry = expiryTime(stream, stream.touchedAt)
    if (expiry === null || this.now() < expiry) return stream
    await this.drop(tx, stream)
    changed.push(name)
    return tx.stream(name)
  }

  private async existing (tx: StreamTransaction, name: string, changed: string[]): Promise<StoredStream> {
    const stream = await this.lookup(tx, name, changed)
    if (stream === null) throw new StreamNotFoundError()
    if (stream.gone) throw new StreamGoneError()
    return stream
  }

  /** Deletes a stream: kept as gone while forks read it; otherwise removed, releasing its own source. */
  private async drop (tx: StreamTransaction, stream: StoredStream): Promise<void> {
    if (stream.forks > 0) {
      stream.gone = true
      await tx.put(stream)
      return
    }
    await tx.remove(stream)
    if (stream.parentId === null) return
    const parent = await tx.streamById(stream.parentId)
    if (parent === null) return
    parent.forks--
    if (parent.gone && parent.forks === 0) await this.drop(tx, parent)
    else await tx.put(parent)
  }

  private async sweep (): Promise<void> {
    for (const name of await this.backend.names()) await this.run(name, async (tx, changed) => { await this.lookup(tx, name, changed) })
  }
}
