// KvStore: the engine's `kv` adapter. `in_memory` keeps everything in plain Maps; `file_based` also writes every
// change, with its change-log entry, to a SQLite file (lib/adapters/sqlite.ts) before acknowledging it, so the
// streams survive a restart. An in-process index serves reads and decides create/update, revisions and order.
import { randomBytes } from 'node:crypto'
import {
  checkChangeRange, DEFAULT_CHANGE_LOG_MAX_AGE_MS, DEFAULT_CHANGE_LOG_MAX_CHANGES, DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES,
  trimSlack,
  type ChangeLogRetention, type ChangePage, type ChangeRecord, type Committed, type DeleteResult, type EventListener,
  type GroupSnapshot, type ItemSnapshot, type ListAllResult, type SetResult, type StreamAdapter, type StreamEvent,
  type StreamEventBody, type UpdateResult
} from './adapter.js'
import { SqliteFile, type FileChange } from './sqlite.js'
import { applyUpdateOps, type UpdateOp } from '../update-ops.js'
import { ClosedError, InvalidArgumentError } from '../errors.js'
import type { KvConfig } from '../options.js'
import { StreamClock } from '../clock.js'

export { DEFAULT_CHANGE_LOG_MAX_CHANGES }

interface GroupState {
  items: Map<string, unknown>
  order: Map<string, number>
  rev: number
  timestamp: number
  nextOrder: number
  /** Memory store: the newest change-log entries, oldest first; entries up to `trimmed` were dropped. */
  log: ChangeRecord[]
  trimmed: number
  /** SQLite store: the group's row id in the file, and the oldest revision its log may still hold (null: none). */
  gid: number
  logStart: number | null
  /** Writes to one group run one at a time, so they persist and emit in commit order. */
  tail: Promise<unknown>
}

/** A change about to be committed: what the file needs beyond the event itself. */
interface PendingWrite {
  id: string | null
  body: StreamEventBody
  /** The event body as JSON text, for the file's log. */
  bodyText: () => string
  item?: FileChange['item']
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
function changeText (kind: string, dataText: string): string {
  return `{"type":"${kind}","data":${dataText}}`
}

export class KvAdapter implements StreamAdapter {
  private readonly streams = new Map<string, Map<string, GroupState>>()
  private readonly listeners = new Set<EventListener>()
  private readonly clock = new StreamClock()
  private readonly retention: ChangeLogRetention
  private readonly file: SqliteFile | null
  private nextGid = 1
  private closed = false
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

  async start (): Promise<void> {
    if (this.file === null) return
    const contents = await this.file.open()
    this.epoch = contents.epoch
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
      state.nextOrder = Math.max(state.nextOrder, item.order + 1)
    }
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
      state = { items: new Map(), order: new Map(), rev: 0, timestamp: 0, nextOrder: 0, log: [], trimmed: 0, gid: gid ?? this.nextGid++, logStart: null, tail: Promise.resolve() }
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
    const run = state.tail.then(work, work)
    state.tail = run.catch(() => {})
    return run
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
      } else {
        state.items.set(id, (write.body as { data: unknown }).data)
        state.order.set(id, write.item.order)
        if (write.item.order === state.nextOrder) state.nextOrder++
      }
    }
    state.rev = rev
    state.timestamp = timestamp
    if (this.file === null) this.logInMemory(state, { id: write.id, rev, timestamp, event: write.body })
    const event: StreamEvent = { stream, group, id: write.id, rev, timestamp, event: write.body }
    for (const listener of this.listeners) listener(event)
    return event
  }

  private async commitToFile (state: GroupState, stream: string, group: string, rev: number, timestamp: number, write: PendingWrite): Promise<void> {
    const { maxChanges } = this.retention
    const change: FileChange = { gid: state.gid, stream, group, rev, timestamp, item: write.item, log: null }
    let logStart = state.logStart
    if (maxChanges > 0) {
      change.log = { id: write.id, body: write.bodyText() }
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

  /** The memory store's log: a bounded ring per group, also cut by age. */
  private logInMemory (state: GroupState, record: ChangeRecord): void {
    const { maxChanges, maxAgeMs } = this.retention
    const log = state.log
    if (maxChanges === 0) {
      log.length = 0
      state.trimmed = record.rev
      return
    }
    log.push(record)
    let drop = Math.max(0, log.length - maxChanges)
    // Trimmed in batches by count, so a write does not shift the whole log every time.
    if (log.length < maxChanges + trimSlack(maxChanges)) drop = 0
    while (drop < log.length && log[drop].timestamp < record.timestamp - maxAgeMs) drop++
    if (drop > 0) state.trimmed = log.splice(0, drop)[drop - 1].rev
  }

  /** Stores `value` at `id`, keeping the item's place; emits create or update once the store has it. */
  private async write (state: GroupState, stream: string, group: string, id: string, stored: { value: unknown, text: string }): Promise<{ old: unknown, event: StreamEvent }> {
    const existed = state.items.has(id)
    const old = existed ? state.items.get(id) : null
    const kind = existed ? 'update' : 'create'
    const event = await this.commit(state, stream, group, {
      id,
      body: { type: kind, data: stored.value },
      bodyText: () => changeText(kind, stored.text),
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
      const event = await this.commit(state, stream, group, { id, body, bodyText: () => JSON.stringify(body), item: { id, removed: true } })
      return { old_value: old, event }
    })
  }

  async update (stream: string, group: string, id: string, ops: UpdateOp[], prepare?: (value: unknown) => unknown): Promise<Committed<UpdateResult>> {
    this.checkOpen()
    const state = this.group(stream, group)
    return this.serial(state, async () => {
      const { value, errors } = applyUpdateOps(state.items.get(id), ops)
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
    // Nothing is stored, but the revision and the log entry are: they must never go back after a restart.
    return this.serial(state, () => this.commit(state, stream, group, { id, body: detached.value as StreamEventBody, bodyText: () => detached.text }))
  }

  async readChanges (stream: string, group: string, after: number, limit: number): Promise<ChangePage> {
    this.checkOpen()
    checkChangeRange(after, limit)
    const state = this.peek(stream, group)
    if (this.file !== null) return { epoch: this.epoch, ...await this.file.readChanges(state?.gid ?? null, after, limit) }
    if (state === undefined) return { epoch: this.epoch, changes: [], rev: 0, trimmed: 0 }
    // The log holds consecutive revisions, so the first entry after `after` is found by arithmetic.
    const first = state.log.length === 0 ? state.rev + 1 : state.log[0].rev
    const start = Math.max(0, after + 1 - first)
    return { epoch: this.epoch, changes: state.log.slice(start, start + limit), rev: state.rev, trimmed: state.trimmed }
  }

  async getGroup (stream: string, group: string): Promise<unknown[]> {
    this.checkOpen()
    const state = this.peek(stream, group)
    return state === undefined ? [] : [...state.items.values()].map(value => structuredClone(value))
  }

  async snapshotGroup (stream: string, group: string): Promise<GroupSnapshot> {
    this.checkOpen()
    const state = this.peek(stream, group)
    if (state === undefined) return { items: [], ids: [], rev: 0, timestamp: 0, epoch: this.epoch }
    return { items: [...state.items.values()], ids: [...state.items.keys()], rev: state.rev, timestamp: state.timestamp, epoch: this.epoch }
  }

  async snapshotItem (stream: string, group: string, id: string): Promise<ItemSnapshot> {
    this.checkOpen()
    const state = this.peek(stream, group)
    if (state === undefined) return { value: null, rev: 0, timestamp: 0 }
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

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    // Let acknowledged and queued writes reach the store before it closes.
    await Promise.all([...this.streams.values()].flatMap(groups => [...groups.values()].map(state => state.tail)))
    this.listeners.clear()
    await this.file?.close()
  }
}

export function createKvAdapter (config: KvConfig): KvAdapter {
  return new KvAdapter(config)
}
