// KvStore: the engine's `kv` adapter. `in_memory` keeps everything in plain Maps; `file_based` also writes every
// change, with its change-log entry, to a SQLite file (lib/adapters/sqlite.ts) before acknowledging it, so the
// streams survive a restart. An in-process index serves reads and decides create/update, revisions and order.
import { randomBytes } from 'node:crypto'
import {
  type ChangeKind, checkChangeRange, DEFAULT_CHANGE_LOG_MAX_AGE_MS, DEFAULT_CHANGE_LOG_MAX_CHANGES, DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES,
  trimSlack,
  type ChangeLogRetention, type ChangePage, type ChangeRecord, type Committed, type DeleteResult, type EventListener,
  type GroupSnapshot, type ItemSnapshot, type ListAllResult, type SetResult, type StreamAdapter, type StreamEvent,
  type StreamEventBody, type UpdateResult
} from './adapter.js'
import { SqliteFile, type FileChange } from './sqlite.js'
import { applyUpdateOps, type UpdateOp } from '../update-ops.js'
import { ClosedError, InvalidArgumentError } from '../errors.js'
import { normalizeKvConfig, type KvAdapterConfig, type KvConfig } from './kv-config.js'
import { StreamClock } from '../clock.js'
import type { DurableStreamStore } from '../http/store.js'

interface GroupState {
  stream: string
  group: string
  items: Map<string, unknown>
  order: Map<string, number>
  /** Each item's last-change timestamp (absent for an item a file of an older schema holds). */
  stamps: Map<string, number>
  rev: number
  timestamp: number
  nextOrder: number
  /** Memory store: the newest change-log entries (null while the group has none). */
  log: MemoryChangeLog | null
  /** SQLite store: the group's row id in the file, and the oldest revision its log may still hold (null: none). */
  gid: number
  logStart: number | null
  /** Writes to one group run one at a time, so they persist and emit in commit order. */
  tail: Promise<unknown>
  /** Writes queued or running: a group with any is never dropped. */
  queued: number
}

/** A change about to be committed: what the file needs beyond the event itself. */
interface PendingWrite {
  id: string | null
  body: StreamEventBody
  /**
   * For the log: the JSON text of the change's data when `kind` is set (the body is `{"type":kind,"data":text}`),
   * else of the whole body. Kept apart so the memory log writes the parts without joining them first.
   */
  kind: ChangeKind | null
  text: string
  item?: FileChange['item']
}

/** Change-log entries per chunk of the memory log (fewer when the log keeps fewer). */
const LOG_CHUNK_ENTRIES = 64
/** The first byte size of a chunk's buffer; it doubles as entries need. */
const LOG_CHUNK_BYTES = 1024

/** The bytes before a change's data in its logged body, by kind. */
const CHANGE_HEADS: Record<ChangeKind, Buffer> = {
  create: Buffer.from('{"type":"create","data":'),
  update: Buffer.from('{"type":"update","data":'),
  delete: Buffer.from('{"type":"delete","data":')
}
const CLOSE_BRACE = 0x7d

/** Entries of the memory log, a chunk at a time: consecutive revisions from `firstRev`. */
interface LogChunk {
  firstRev: number
  /** Entries before this one are trimmed. */
  start: number
  count: number
  /** Each entry's item id then its event body (JSON), in UTF-8, one after the other; entry i ends at ends[i]. */
  bytes: Buffer
  ends: Uint32Array
  /** The byte length of each entry's item id; -1 for none. */
  idLengths: Int32Array
  timestamps: Float64Array
}

/**
 * A group's change log in memory, its bodies kept as UTF-8 JSON in buffers outside the JS heap. A log of parsed
 * bodies keeps every logged version of every value alive as objects the garbage collector moves and traces
 * until they are trimmed: that, not the append, was the cost of the log on writes.
 */
class MemoryChangeLog {
  private chunks: LogChunk[] = []
  /** The last chunk trimmed away, reused for the next one: a log in its steady state allocates nothing. */
  private spare: LogChunk | null = null
  private readonly chunkEntries: number
  /** Entries up to this revision were dropped. */
  trimmed: number

  constructor (maxChanges: number, trimmed: number) {
    this.chunkEntries = Math.min(LOG_CHUNK_ENTRIES, maxChanges)
    this.trimmed = trimmed
  }

  /** Appends an entry whose body is `text`, or `{"type":kind,"data":text}` when `kind` is given. */
  append (rev: number, timestamp: number, id: string | null, kind: ChangeKind | null, text: string): void {
    let chunk = this.chunks.at(-1)
    if (chunk === undefined || chunk.count === this.chunkEntries) {
      const size = this.chunkEntries
      chunk = this.spare ?? { firstRev: 0, start: 0, count: 0, bytes: Buffer.allocUnsafeSlow(LOG_CHUNK_BYTES), ends: new Uint32Array(size), idLengths: new Int32Array(size), timestamps: new Float64Array(size) }
      this.spare = null
      chunk.firstRev = rev
      chunk.start = 0
      chunk.count = 0
      this.chunks.push(chunk)
    }
    const from = chunk.count === 0 ? 0 : chunk.ends[chunk.count - 1]
    const head = kind === null ? null : CHANGE_HEADS[kind]
    // A UTF-16 unit takes at most 3 bytes in UTF-8.
    const most = (head?.length ?? 0) + (text.length + (id?.length ?? 0)) * 3 + 1
    if (from + most > chunk.bytes.length) {
      const grown = Buffer.allocUnsafeSlow(Math.max(chunk.bytes.length * 2, from + most))
      chunk.bytes.copy(grown, 0, 0, from)
      chunk.bytes = grown
    }
    let end = from
    chunk.idLengths[chunk.count] = id === null ? -1 : chunk.bytes.write(id, end)
    if (id !== null) end += chunk.idLengths[chunk.count]
    if (head !== null) {
      chunk.bytes.set(head, end)
      end += head.length
    }
    end += chunk.bytes.write(text, end)
    if (head !== null) chunk.bytes[end++] = CLOSE_BRACE
    chunk.ends[chunk.count] = end
    chunk.timestamps[chunk.count] = timestamp
    chunk.count++
  }

  /** Drops the entries beyond the newest `keep`, and those older than `cutoff` (epoch ms). */
  trim (keep: number, cutoff: number): void {
    let size = this.size()
    while (this.chunks.length > 0) {
      const chunk = this.chunks[0]
      if (size > keep || chunk.timestamps[chunk.start] < cutoff) {
        this.trimmed = chunk.firstRev + chunk.start
        chunk.start++
        size--
        if (chunk.start === chunk.count) this.spare = this.chunks.shift()!
      } else {
        return
      }
    }
  }

  private size (): number {
    const first = this.chunks[0]
    const last = this.chunks.at(-1)
    return first === undefined || last === undefined ? 0 : last.firstRev + last.count - first.firstRev - first.start
  }

  /** Entries with rev > after, at most `limit`. */
  read (after: number, limit: number): ChangeRecord[] {
    const changes: ChangeRecord[] = []
    const base = this.chunks[0]?.firstRev ?? 0
    // Every chunk but the last holds chunkEntries consecutive revisions: an entry is found by arithmetic.
    for (let rev = Math.max(after + 1, this.trimmed + 1); changes.length < limit; rev++) {
      const chunk = this.chunks[Math.floor((rev - base) / this.chunkEntries)]
      const index = rev - (chunk?.firstRev ?? 0)
      if (chunk === undefined || index >= chunk.count) break
      const from = index === 0 ? 0 : chunk.ends[index - 1]
      const idLength = chunk.idLengths[index]
      const id = idLength < 0 ? null : chunk.bytes.toString('utf8', from, from + idLength)
      const body = chunk.bytes.toString('utf8', from + Math.max(idLength, 0), chunk.ends[index])
      changes.push({ id, rev, timestamp: chunk.timestamps[index], event: JSON.parse(body) as StreamEventBody })
    }
    return changes
  }
}

/** The value as JSON keeps it (what Redis and SQLite store too), and that JSON text. */
function encode (value: unknown): { value: unknown, text: string } {
  let text: string | undefined
  try {
    text = JSON.stringify(value)
  } catch (err) {
    throw new InvalidArgumentError(`the value cannot be stored as JSON: ${(err as Error).message}`)
  }
  if (text === undefined) throw new InvalidArgumentError('the value cannot be stored as JSON')
  // Parsed back: detached from the caller's object, so a later mutation by the caller cannot change stored state.
  return { value: JSON.parse(text), text }
}

/** The JSON text of a change body whose data is already JSON text. */
function bodyText ({ kind, text }: PendingWrite): string {
  return kind === null ? text : `{"type":"${kind}","data":${text}}`
}

export class KvAdapter implements StreamAdapter {
  private readonly streams = new Map<string, Map<string, GroupState>>()
  private readonly listeners = new Set<EventListener>()
  private readonly clock = new StreamClock()
  readonly retention: ChangeLogRetention
  private readonly file: SqliteFile | null
  private nextGid = 1
  private closed = false
  private durable: Promise<DurableStreamStore> | null = null
  /**
   * The revision a new group starts from: the highest one any dropped group reached (see dropAgedItemless).
   * A group that comes back goes on above every revision it had, so a feed offset from its earlier life is
   * trimmed (410), never taken for a position in the new one.
   */
  private revFloor = 0
  /** Groups holding no items, in the order of their last write: dropped once that write is older than max_age_ms. */
  private readonly itemless = new Set<GroupState>()
  /** The newest timestamp committed: under bursts the clock runs ahead of Date.now(), and ages follow it. */
  private newest = 0
  /**
   * The store's history: a memory store gets a new one at every start (its log lives in memory, so offsets
   * from an earlier life mean nothing); a SQLite store reads the one made with its file.
   */
  epoch = randomBytes(8).toString('hex')
  /** Items of the file that could not be read at start (not JSON): skipped, so the store still starts. */
  skippedItems = 0

  constructor (private readonly config: KvConfig) {
    const file = config.storeMethod === 'file_based'
    this.retention = config.changeLog ?? {
      maxChanges: file ? DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES : DEFAULT_CHANGE_LOG_MAX_CHANGES,
      maxAgeMs: DEFAULT_CHANGE_LOG_MAX_AGE_MS
    }
    this.file = config.storeMethod === 'file_based' ? new SqliteFile(config.filePath, this.retention.maxAgeMs) : null
  }

  /**
   * Opens and loads the file once: an adapter the app started itself and then handed to the plugin (which starts
   * what it is given) is not loaded twice.
   */
  async start (): Promise<void> {
    this.loading ??= this.load()
    await this.loading
  }

  private loading: Promise<void> | null = null

  private async load (): Promise<void> {
    if (this.file === null) return
    const contents = await this.file.open()
    this.epoch = contents.epoch
    this.revFloor = contents.revFloor
    const byGid = new Map<number, GroupState>()
    for (const stored of contents.groups) {
      const state = this.group(stored.stream, stored.group, stored.gid)
      state.rev = stored.rev
      state.timestamp = stored.timestamp
      state.logStart = stored.firstLogged
      this.clock.observe(stored.timestamp)
      byGid.set(stored.gid, state)
      this.nextGid = Math.max(this.nextGid, stored.gid + 1)
    }
    for (const item of contents.items) {
      const state = byGid.get(item.gid)
      let value: unknown
      try {
        if (state === undefined) throw new Error('no group')
        value = JSON.parse(item.text)
      } catch {
        this.skippedItems++
        continue
      }
      state.items.set(item.id, value)
      state.order.set(item.id, item.order)
      if (item.timestamp !== null) state.stamps.set(item.id, item.timestamp)
      state.nextOrder = Math.max(state.nextOrder, item.order + 1)
    }
    // Groups the file keeps with no item (they saw only custom events or deletes) age out like those written now.
    const empty = [...byGid.values()].filter(state => state.items.size === 0).sort((a, b) => a.timestamp - b.timestamp)
    for (const state of empty) this.itemless.add(state)
    if (this.skippedItems > 0) {
      process.emitWarning(`${this.skippedItems} item(s) of the SQLite file could not be read and were skipped`, { code: 'STREAMS_SKIPPED_ITEMS' })
    }
  }

  private group (stream: string, group: string, gid?: number): GroupState {
    let groups = this.streams.get(stream)
    if (groups === undefined) {
      groups = new Map()
      this.streams.set(stream, groups)
    }
    let state = groups.get(group)
    if (state === undefined) {
      const fields = { items: new Map(), order: new Map(), stamps: new Map(), log: null, logStart: null, tail: Promise.resolve() }
      state = { ...fields, stream, group, rev: this.revFloor, timestamp: 0, nextOrder: 0, gid: gid ?? this.nextGid++, queued: 0 }
      groups.set(group, state)
    }
    return state
  }

  private peek (stream: string, group: string): GroupState | undefined {
    return this.streams.get(stream)?.get(group)
  }

  private checkOpen (): void {
    if (this.closed) throw new ClosedError()
  }

  /** Queues `work` behind the group's earlier writes; a failed write does not block the next ones. */
  private serial<T> (state: GroupState, work: () => Promise<T>): Promise<T> {
    state.queued++
    const run = state.tail.then(work, work)
    const done = (): void => {
      state.queued--
      // Kept in the order of last writes: re-added at the end while the group holds no item.
      this.itemless.delete(state)
      if (state.items.size === 0) this.itemless.add(state)
      this.dropAgedItemless()
    }
    state.tail = run.then(done, done)
    return run
  }

  /**
   * Drops the groups that hold no item and whose last write is older than max_age_ms (at once when the log is
   * off): their log has aged out, so nothing of them is left to read. Their revisions raise `revFloor`.
   * `send()` to groups nobody writes items to thus leaves no state behind past the retention.
   */
  private dropAgedItemless (): void {
    const { maxChanges, maxAgeMs } = this.retention
    const cutoff = Math.max(Date.now(), this.newest) - maxAgeMs
    for (const state of this.itemless) {
      // In last-write order: the first one too recent to drop ends the look.
      if (maxChanges > 0 && state.timestamp >= cutoff) return
      this.itemless.delete(state)
      if (state.queued > 0 || state.items.size > 0) continue
      const groups = this.streams.get(state.stream)
      groups?.delete(state.group)
      if (groups?.size === 0) this.streams.delete(state.stream)
      this.revFloor = Math.max(this.revFloor, state.rev)
      // A failed drop leaves the group in the file with its revision: still never below the floor.
      this.file?.drop(state.gid, this.revFloor).catch(() => {})
    }
  }

  /** Groups the store keeps state for (items, a revision, a log): bounded by retention (for monitoring and tests). */
  get groupCount (): number {
    let count = 0
    for (const groups of this.streams.values()) count += groups.size
    return count
  }

  /**
   * Commits the group's next change: the file first (item, revision and log entry in one transaction), then
   * the index, the in-memory log and the feed. Runs inside the group's `serial`.
   */
  private async commit (state: GroupState, stream: string, group: string, write: PendingWrite): Promise<StreamEvent> {
    const rev = state.rev + 1
    const timestamp = this.clock.next(state.timestamp)
    if (this.file !== null) await this.commitToFile(state, stream, group, rev, timestamp, write)
    if (write.item !== undefined) {
      const { id } = write.item
      if ('removed' in write.item) {
        state.items.delete(id)
        state.order.delete(id)
        state.stamps.delete(id)
      } else {
        state.items.set(id, (write.body as { data: unknown }).data)
        state.order.set(id, write.item.order)
        state.stamps.set(id, timestamp)
        if (write.item.order === state.nextOrder) state.nextOrder++
      }
    }
    state.rev = rev
    state.timestamp = timestamp
    this.newest = timestamp
    if (this.file === null && this.retention.maxChanges > 0) {
      state.log ??= new MemoryChangeLog(this.retention.maxChanges, rev - 1)
      state.log.append(rev, timestamp, write.id, write.kind, write.text)
      state.log.trim(this.retention.maxChanges, timestamp - this.retention.maxAgeMs)
    }
    const event: StreamEvent = { stream, group, id: write.id, rev, timestamp, event: write.body }
    for (const listener of this.listeners) listener(event)
    return event
  }

  private async commitToFile (state: GroupState, stream: string, group: string, rev: number, timestamp: number, write: PendingWrite): Promise<void> {
    const { maxChanges } = this.retention
    const change: FileChange = { gid: state.gid, stream, group, rev, timestamp, item: write.item, log: null }
    let logStart = state.logStart
    if (maxChanges > 0) {
      change.log = { id: write.id, body: bodyText(write) }
      logStart ??= rev
      // Trimmed in batches, so a write does not delete one old row every time.
      if (rev - logStart + 1 > maxChanges + trimSlack(maxChanges)) {
        change.trimTo = rev - maxChanges
        logStart = change.trimTo + 1
      }
    } else if (logStart !== null) {
      // The log is off: drop what an earlier run logged, so the group's log never has a gap.
      change.trimTo = rev
      logStart = null
    }
    await this.file!.commit(change)
    state.logStart = logStart
  }

  /** Stores `value` at `id`, keeping the item's place; emits create or update once the store has it. */
  private async write (state: GroupState, stream: string, group: string, id: string, stored: { value: unknown, text: string }): Promise<{ old: unknown, event: StreamEvent }> {
    const existed = state.items.has(id)
    const old = existed ? state.items.get(id) : null
    const kind = existed ? 'update' : 'create'
    const event = await this.commit(state, stream, group, {
      id,
      body: { type: kind, data: stored.value },
      kind,
      text: stored.text,
      item: { id, text: stored.text, order: state.order.get(id) ?? state.nextOrder }
    })
    return { old, event }
  }

  async get (stream: string, group: string, id: string): Promise<unknown> {
    this.checkOpen()
    const value = this.peek(stream, group)?.items.get(id)
    return value === undefined ? null : structuredClone(value)
  }

  async set (stream: string, group: string, id: string, value: unknown): Promise<Committed<SetResult>> {
    this.checkOpen()
    const stored = encode(value)
    const state = this.group(stream, group)
    return this.serial(state, async () => {
      const { old, event } = await this.write(state, stream, group, id, stored)
      return { old_value: old, new_value: value, event }
    })
  }

  async delete (stream: string, group: string, id: string): Promise<Committed<DeleteResult>> {
    this.checkOpen()
    const state = this.peek(stream, group)
    if (state === undefined) return { old_value: null, event: null }
    return this.serial(state, async () => {
      if (!state.items.has(id)) return { old_value: null, event: null }
      const old = state.items.get(id)
      const body: StreamEventBody = { type: 'delete', data: old }
      const event = await this.commit(state, stream, group, { id, body, kind: null, text: JSON.stringify(body), item: { id, removed: true } })
      return { old_value: old, event }
    })
  }

  async update (stream: string, group: string, id: string, ops: UpdateOp[], prepare?: (value: unknown) => unknown): Promise<Committed<UpdateResult>> {
    this.checkOpen()
    const state = this.group(stream, group)
    return this.serial(state, async () => {
      const { value, errors } = applyUpdateOps(state.items.get(id), ops, state.items.has(id))
      const next = encode(prepare === undefined ? value : prepare(value))
      const { old, event } = await this.write(state, stream, group, id, next)
      const result = { old_value: old, new_value: structuredClone(next.value) }
      return errors.length > 0 ? { ...result, errors, event } : { ...result, event }
    })
  }

  async publish (stream: string, group: string, id: string | null, body: StreamEventBody): Promise<StreamEvent> {
    this.checkOpen()
    const detached = encode(body)
    const state = this.group(stream, group)
    // No item is stored, but the revision and the log entry are: they must never go back after a restart. A group
    // left without items is dropped once its log aged out (dropAgedItemless).
    return this.serial(state, () => this.commit(state, stream, group, { id, body: detached.value as StreamEventBody, kind: null, text: detached.text }))
  }

  async readChanges (stream: string, group: string, after: number, limit: number): Promise<ChangePage> {
    this.checkOpen()
    checkChangeRange(after, limit)
    const state = this.peek(stream, group)
    // A group not (or no longer) there starts above the floor: its earlier offsets are trimmed.
    if (state === undefined) return { epoch: this.epoch, changes: [], rev: this.revFloor, trimmed: this.revFloor }
    if (this.file !== null) return { epoch: this.epoch, ...await this.file.readChanges(state.gid, after, limit, this.revFloor) }
    // No log (it is off): the whole history is trimmed.
    if (state.log === null) return { epoch: this.epoch, changes: [], rev: state.rev, trimmed: state.rev }
    return { epoch: this.epoch, changes: state.log.read(after, limit), rev: state.rev, trimmed: state.log.trimmed }
  }

  async getGroup (stream: string, group: string): Promise<unknown[]> {
    this.checkOpen()
    const state = this.peek(stream, group)
    return state === undefined ? [] : [...state.items.values()].map(value => structuredClone(value))
  }

  async snapshotGroup (stream: string, group: string): Promise<GroupSnapshot> {
    this.checkOpen()
    const state = this.peek(stream, group)
    if (state === undefined) return { items: [], ids: [], timestamps: [], rev: this.revFloor, timestamp: 0, epoch: this.epoch }
    const ids = [...state.items.keys()]
    const timestamps = ids.map(id => state.stamps.get(id))
    return { items: [...state.items.values()], ids, timestamps, rev: state.rev, timestamp: state.timestamp, epoch: this.epoch }
  }

  async snapshotItem (stream: string, group: string, id: string): Promise<ItemSnapshot> {
    this.checkOpen()
    const state = this.peek(stream, group)
    if (state === undefined) return { value: null, rev: this.revFloor, timestamp: 0 }
    return { value: state.items.get(id) ?? null, rev: state.rev, timestamp: state.timestamp }
  }

  async listGroups (stream: string): Promise<string[]> {
    this.checkOpen()
    const groups = this.streams.get(stream)
    if (groups === undefined) return []
    return [...groups].filter(([, state]) => state.items.size > 0).map(([group]) => group).sort()
  }

  async listAll (): Promise<ListAllResult> {
    this.checkOpen()
    const stream: ListAllResult['stream'] = []
    for (const id of [...this.streams.keys()].sort()) {
      const groups = await this.listGroups(id)
      if (groups.length > 0) stream.push({ id, groups })
    }
    return { stream, count: stream.length }
  }

  subscribe (listener: EventListener): () => void {
    this.listeners.add(listener)
    return () => { this.listeners.delete(listener) }
  }

  /** Durable streams in this store: in its memory, or in its SQLite file on its own writer connection. */
  async durableStreamStore (): Promise<DurableStreamStore> {
    this.checkOpen()
    const file = this.file
    // The store modules are loaded only when durable streams are on.
    this.durable ??= file === null
      ? import('../http/memory-store.js').then(store => store.createMemoryDurableStore())
      : import('../http/sqlite-store.js').then(store => store.createSqliteDurableStore(file))
    return await this.durable
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.durable?.then(store => store.close(), () => {})
    // Let acknowledged and queued writes reach the store before it closes.
    await Promise.all([...this.streams.values()].flatMap(groups => [...groups.values()].map(state => state.tail)))
    this.listeners.clear()
    await this.file?.close()
  }
}

/** A KvStore from its config as a user writes it (checked: InvalidOptionError); call `start()` before use. */
export function createKvAdapter (config: KvAdapterConfig = {}): KvAdapter {
  return new KvAdapter(normalizeKvConfig(config))
}
