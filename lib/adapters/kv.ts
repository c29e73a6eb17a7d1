// KvStore: the engine's `kv` adapter, through keyv. `in_memory` keeps keyv on a Map; `file_based` keeps it on
// SQLite (@keyv/sqlite) so the streams survive a restart. An in-process index serves reads and decides
// create/update, revisions and order; keyv is the store every write goes through before it is acknowledged.
import { randomBytes } from 'node:crypto'
import { mkdir } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import Keyv from 'keyv'
import KeyvSqlite from '@keyv/sqlite'
import type {
  ChangePage, ChangeRecord, Committed, DeleteResult, EventListener, GroupSnapshot, ItemSnapshot, ListAllResult,
  SetResult, StreamAdapter, StreamEvent, StreamEventBody, UpdateResult
} from './adapter.js'
import { applyUpdateOps, type UpdateOp } from '../update-ops.js'
import { ClosedError, InvalidArgumentError, StorageError } from '../errors.js'
import { DEFAULT_CHANGE_LOG_MAX_CHANGES } from './change-log-config.js'
import { normalizeKvConfig, type KvAdapterConfig, type KvConfig } from './kv-config.js'
import { StreamClock } from '../clock.js'

// No ':' here: keyv splits iterator keys on the first ':' to strip the namespace.
const KEYV_NAMESPACE = 'fastifystreams'
// Rows fetched per page when loading a SQLite file at start.
const LOAD_PAGE_SIZE = 1000

/** What keyv stores per item: the value, its place in the group, and the revision/timestamp of its last change. */
interface ItemRecord { v: unknown, o: number, r: number, t: number }
/** What keyv stores per group that has seen a delete: the revision/timestamp a delete left behind. */
interface GroupRecord { r: number, t: number }

interface GroupState {
  items: Map<string, unknown>
  order: Map<string, number>
  rev: number
  timestamp: number
  nextOrder: number
  /** The newest change-log entries, oldest first; entries up to `trimmed` were dropped. */
  log: ChangeRecord[]
  trimmed: number
  /** Writes to one group run one at a time, so they persist and emit in commit order. */
  tail: Promise<unknown>
}

function itemKey (stream: string, group: string, id: string): string {
  return JSON.stringify(['i', stream, group, id])
}

function groupKey (stream: string, group: string): string {
  return JSON.stringify(['g', stream, group])
}

/**
 * The value as JSON keeps it (what Redis and SQLite store too), detached from the caller's object, so a
 * later mutation by the caller cannot change stored state behind the store's back.
 */
function detach (value: unknown): unknown {
  let text: string | undefined
  try {
    text = JSON.stringify(value)
  } catch (err) {
    throw new InvalidArgumentError(`the value cannot be stored as JSON: ${(err as Error).message}`)
  }
  if (text === undefined) throw new InvalidArgumentError('the value cannot be stored as JSON')
  return JSON.parse(text)
}

export class KvAdapter implements StreamAdapter {
  private readonly streams = new Map<string, Map<string, GroupState>>()
  private readonly listeners = new Set<EventListener>()
  private readonly clock = new StreamClock()
  // One Map per adapter, holding values by reference: nothing to serialise in memory. A SQLite store
  // replaces it in start(), once the file's folder exists.
  private keyv = new Keyv({ store: new Map(), namespace: KEYV_NAMESPACE, serialize: undefined, deserialize: undefined, throwOnErrors: true })
  private closed = false
  /** A new history at every start: the log lives in memory, so offsets from an earlier life mean nothing. */
  readonly epoch = randomBytes(8).toString('hex')

  constructor (private readonly config: KvConfig) {}

  async start (): Promise<void> {
    if (this.config.storeMethod !== 'file_based') return
    const file = resolve(this.config.filePath)
    try {
      await mkdir(dirname(file), { recursive: true })
      const sqlite = new KeyvSqlite({ uri: `sqlite://${file}`, iterationLimit: LOAD_PAGE_SIZE })
      sqlite.on('error', () => {}) // the failed query below reports it
      this.keyv = new Keyv({ store: sqlite, namespace: KEYV_NAMESPACE, throwOnErrors: true })
      // WAL with synchronous=FULL: every acknowledged commit is on disk, at one fsync per write.
      await sqlite.query('PRAGMA journal_mode=WAL')
      await sqlite.query('PRAGMA synchronous=FULL')
      await this.load()
    } catch (err) {
      throw new StorageError(`cannot open ${this.config.filePath}: ${(err as Error).message}`)
    }
  }

  /** Rebuilds the index from the file: items in their recorded order, revisions and timestamps as left. */
  private async load (): Promise<void> {
    const records: Array<[string[], ItemRecord | GroupRecord]> = []
    if (this.keyv.iterator === undefined) return
    for await (const [key, value] of this.keyv.iterator(KEYV_NAMESPACE)) {
      records.push([JSON.parse(key as string) as string[], value as ItemRecord | GroupRecord])
    }
    records.sort((a, b) => ('o' in a[1] ? a[1].o : -1) - ('o' in b[1] ? b[1].o : -1))
    for (const [[kind, stream, group, id], record] of records) {
      const state = this.group(stream, group)
      state.rev = Math.max(state.rev, record.r)
      state.trimmed = state.rev
      state.timestamp = Math.max(state.timestamp, record.t)
      this.clock.observe(record.t)
      if (kind === 'i') {
        const item = record as ItemRecord
        state.items.set(id, item.v)
        state.order.set(id, item.o)
        state.nextOrder = Math.max(state.nextOrder, item.o + 1)
      }
    }
  }

  private group (stream: string, group: string): GroupState {
    let groups = this.streams.get(stream)
    if (groups === undefined) {
      groups = new Map()
      this.streams.set(stream, groups)
    }
    let state = groups.get(group)
    if (state === undefined) {
      state = { items: new Map(), order: new Map(), rev: 0, timestamp: 0, nextOrder: 0, log: [], trimmed: 0, tail: Promise.resolve() }
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

  private async persist (write: () => Promise<unknown>): Promise<void> {
    try {
      await write()
    } catch (err) {
      throw new StorageError((err as Error).message)
    }
  }

  /** Records the committed event at revision `rev` in the group's log and hands it to the feed. */
  private emit (state: GroupState, stream: string, group: string, id: string | null, rev: number, timestamp: number, event: StreamEventBody): StreamEvent {
    state.rev = rev
    state.timestamp = timestamp
    state.log.push({ id, rev, timestamp, event })
    // Trimmed in batches, so a write does not shift the whole log every time.
    if (state.log.length >= DEFAULT_CHANGE_LOG_MAX_CHANGES * 1.25) {
      const dropped = state.log.splice(0, state.log.length - DEFAULT_CHANGE_LOG_MAX_CHANGES)
      state.trimmed = dropped[dropped.length - 1].rev
    }
    const streamEvent: StreamEvent = { stream, group, id, rev, timestamp, event }
    for (const listener of this.listeners) listener(streamEvent)
    return streamEvent
  }

  /** Stores `value` at `id`, keeping the item's place; emits create or update once the store has it. */
  private async write (state: GroupState, stream: string, group: string, id: string, value: unknown): Promise<{ old: unknown, event: StreamEvent }> {
    const existed = state.items.has(id)
    const old = existed ? state.items.get(id) : null
    const order = state.order.get(id) ?? state.nextOrder
    const rev = state.rev + 1
    const timestamp = this.clock.next(state.timestamp)
    await this.persist(() => this.keyv.set(itemKey(stream, group, id), { v: value, o: order, r: rev, t: timestamp } satisfies ItemRecord))
    if (order === state.nextOrder) state.nextOrder++
    state.items.set(id, value)
    state.order.set(id, order)
    return { old, event: this.emit(state, stream, group, id, rev, timestamp, { type: existed ? 'update' : 'create', data: value }) }
  }

  async get (stream: string, group: string, id: string): Promise<unknown> {
    this.checkOpen()
    const value = this.peek(stream, group)?.items.get(id)
    return value === undefined ? null : structuredClone(value)
  }

  async set (stream: string, group: string, id: string, value: unknown): Promise<Committed<SetResult>> {
    this.checkOpen()
    const stored = detach(value)
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
      const rev = state.rev + 1
      const timestamp = this.clock.next(state.timestamp)
      // The group record first: were the process to die between the two, the revision still never goes back.
      await this.persist(() => this.keyv.set(groupKey(stream, group), { r: rev, t: timestamp } satisfies GroupRecord))
      await this.persist(() => this.keyv.delete(itemKey(stream, group, id)))
      state.items.delete(id)
      state.order.delete(id)
      return { old_value: old, event: this.emit(state, stream, group, id, rev, timestamp, { type: 'delete', data: old }) }
    })
  }

  async update (stream: string, group: string, id: string, ops: UpdateOp[], prepare?: (value: unknown) => unknown): Promise<Committed<UpdateResult>> {
    this.checkOpen()
    const state = this.group(stream, group)
    return this.serial(state, async () => {
      const { value, errors } = applyUpdateOps(state.items.get(id), ops)
      const next = detach(prepare === undefined ? value : prepare(value))
      const { old, event } = await this.write(state, stream, group, id, next)
      const result = { old_value: old, new_value: structuredClone(next) }
      return errors.length > 0 ? { ...result, errors, event } : { ...result, event }
    })
  }

  async publish (stream: string, group: string, id: string | null, body: StreamEventBody): Promise<StreamEvent> {
    this.checkOpen()
    const detached = detach(body) as StreamEventBody
    const state = this.group(stream, group)
    return this.serial(state, async () => {
      const rev = state.rev + 1
      const timestamp = this.clock.next(state.timestamp)
      // Nothing is stored, but the revision is: it must never go back after a restart.
      if (this.config.storeMethod === 'file_based') {
        await this.persist(() => this.keyv.set(groupKey(stream, group), { r: rev, t: timestamp } satisfies GroupRecord))
      }
      return this.emit(state, stream, group, id, rev, timestamp, detached)
    })
  }

  async readChanges (stream: string, group: string, after: number, limit: number): Promise<ChangePage> {
    this.checkOpen()
    const state = this.peek(stream, group)
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
    await this.keyv.disconnect()
  }
}

/** A KvStore from its config as a user writes it (checked: InvalidOptionError); call `start()` before use. */
export function createKvAdapter (config: KvAdapterConfig = {}): KvAdapter {
  return new KvAdapter(normalizeKvConfig(config))
}
