// The StreamAdapter contract: the only place that knows where data lives.
// Every backend (memory, SQLite, Redis, a user's own) implements it; test/adapters/contract.ts checks it.

import type { UpdateOp, UpdateOpError } from '../update-ops.js'
import type { DurableStreamStore } from '../http/store.js'
import { InvalidArgumentError } from '../errors.js'

/** A stored change kind, as it appears in the wire envelope's `event.type`. */
export type ChangeKind = 'create' | 'update' | 'delete'

/** The `event` member of a wire envelope, for changes and custom events. */
export type StreamEventBody =
  | { type: ChangeKind, data: unknown }
  | { type: 'event', event: { type: string, data: unknown } }

/**
 * One committed change (or custom event) of a group, as the adapter's feed delivers it.
 * `timestamp` is epoch ms and strictly increases within a group, in commit order, for changes and custom
 * events alike. `rev` is the event's position in the group's change log: it grows by one with every stored
 * change and every custom event, so each has a position (an offset) of its own.
 */
export interface StreamEvent {
  stream: string
  group: string
  id: string | null
  rev: number
  timestamp: number
  event: StreamEventBody
}

/** A group's items with the revision and timestamp of the last change they include, read atomically. */
export interface GroupSnapshot {
  items: unknown[]
  /** The item ids, in the order of `items`. */
  ids: string[]
  /**
   * Each item's last-change timestamp (epoch ms), in the order of `items`, where the store knows it (undefined
   * for an item it does not; the whole array absent for a store that keeps none). Feed snapshots carry it.
   */
  timestamps?: Array<number | undefined>
  rev: number
  timestamp: number
  /** The store's epoch (see ChangePage), for adapters that keep a change log. */
  epoch?: string
}

/** One item with the revision and timestamp of its group's last change, read atomically. */
export interface ItemSnapshot {
  value: unknown
  rev: number
  timestamp: number
}

/** One entry of a group's change log: a committed change or custom event, as the feed delivered it. */
export type ChangeRecord = Omit<StreamEvent, 'stream' | 'group'>

/** A page of a group's change log, read atomically with the group's revision. */
export interface ChangePage {
  /**
   * The store's epoch: random, made with the store and the same on every node sharing it. A new epoch means a
   * new history (a memory store after a restart, a wiped Redis): revisions from another epoch mean nothing here.
   */
  epoch: string
  /** Entries with `rev > after`, ascending, at most `limit` of them, without gaps. */
  changes: ChangeRecord[]
  /** The group's last revision. */
  rev: number
  /** Entries up to this revision are no longer kept: a reader at `after < trimmed` has missed some. */
  trimmed: number
}

/**
 * How much of each group's change log an adapter keeps: the newest `maxChanges` entries (0 keeps none: the log
 * is off), and none older than `maxAgeMs`. Age retention applies when the group is next written (SQLite:
 * by a sweep at most every minute while the store is written).
 */
export interface ChangeLogRetention {
  maxChanges: number
  maxAgeMs: number
}

/** Change-log entries the memory store keeps per group by default. */
export const DEFAULT_CHANGE_LOG_MAX_CHANGES = 1000
/** Change-log entries SQLite and Redis keep per group by default (they keep them outside the heap). */
export const DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES = 10_000
/** The age past which change-log entries are dropped by default: 7 days. */
export const DEFAULT_CHANGE_LOG_MAX_AGE_MS = 7 * 24 * 60 * 60 * 1000

/**
 * Entries a trim may leave above `maxChanges` before it runs: trimming in batches keeps a write from
 * deleting one old entry every time.
 */
export function trimSlack (maxChanges: number): number {
  return Math.ceil(maxChanges / 4)
}

/** Refuses a `readChanges` offset or limit that is not a whole number in range (STREAMS_ERR_INVALID_ARGUMENT). */
export function checkChangeRange (after: number, limit: number): void {
  if (!Number.isSafeInteger(after) || after < 0) throw new InvalidArgumentError('after must be an integer >= 0')
  if (!Number.isSafeInteger(limit) || limit < 1) throw new InvalidArgumentError('limit must be an integer >= 1')
}

export interface SetResult { old_value: unknown, new_value: unknown }
export interface DeleteResult { old_value: unknown }
export interface UpdateResult { old_value: unknown, new_value: unknown, errors?: UpdateOpError[] }

/**
 * What an adapter write answers: the engine's result plus the event it committed (null when nothing was
 * emitted, as for the delete of a missing item). The plugin hands `event` to change triggers, so they see
 * the frame the sockets got; the public API strips it.
 */
export type Committed<R> = R & { event: StreamEvent | null }
export interface ListAllResult { stream: Array<{ id: string, groups: string[] }>, count: number }

export type EventListener = (event: StreamEvent) => void

export interface StreamAdapter {
  /** How much of each group's change log the adapter keeps (built-in adapters): `feeds.retention` is checked against it. */
  readonly retention?: ChangeLogRetention
  /** Stored items the adapter skipped because it could not read them (optional; the `skipped_items` metric). */
  readonly skippedItems?: number
  /** Resolves once the backend is reachable and loaded; rejects with a coded error otherwise. */
  start?(): Promise<void>
  get(stream: string, group: string, id: string): Promise<unknown>
  /**
   * Stores `value` (already prepared by the caller) and emits create (no value was stored at `id`; a stored
   * JSON null is a value) or update. Resolves once durable.
   */
  set(stream: string, group: string, id: string, value: unknown): Promise<Committed<SetResult>>
  /** Removes the item; emits delete with the old value only if something was removed. */
  delete(stream: string, group: string, id: string): Promise<Committed<DeleteResult>>
  /** Values of the group in insertion order (first insert; a re-set keeps its place). */
  getGroup(stream: string, group: string): Promise<unknown[]>
  /** Group ids of the stream that hold at least one item, sorted. */
  listGroups(stream: string): Promise<string[]>
  /** Every stream with its non-empty groups, streams and groups sorted. */
  listAll(): Promise<ListAllResult>
  /**
   * Applies `ops` atomically to the item (a missing item starts from `{}`), stores and emits like set.
   * `prepare` runs on the result before it is stored (the plugin injects `id` there).
   */
  update(stream: string, group: string, id: string, ops: UpdateOp[], prepare?: (value: unknown) => unknown): Promise<Committed<UpdateResult>>
  /**
   * Emits `body` to the group (and to subscribers of item `id` when given) with the next revision, without
   * storing any item: a custom event (`{ type: 'event', event }`), or a change an override of the data
   * functions made elsewhere (`{ type: 'create' | 'update' | 'delete', data }`). Resolves with the event.
   */
  publish(stream: string, group: string, id: string | null, body: StreamEventBody): Promise<StreamEvent>
  /** The group's items with the rev/timestamp of the last change they include. */
  snapshotGroup(stream: string, group: string): Promise<GroupSnapshot>
  /** One item (or null) with its group's rev/timestamp. */
  snapshotItem(stream: string, group: string, id: string): Promise<ItemSnapshot>
  /**
   * Reads the group's change log after revision `after` (a non-negative integer; past the group's revision it
   * answers no changes), at most `limit` entries. Needed for feeds: every built-in adapter has it, and its
   * snapshots carry `epoch`; a user adapter without it serves sockets only.
   */
  readChanges?(stream: string, group: string, after: number, limit: number): Promise<ChangePage>
  /**
   * Registers the listener for every committed change and custom event (local and, for shared backends,
   * from other nodes), each delivered once, in commit order per group. Returns an unsubscribe function.
   */
  subscribe(listener: EventListener): () => void
  /**
   * Registers a listener told when the feed may have missed events (a shared backend's connection was
   * lost and is back): subscribers must be re-synced. Optional.
   */
  onResync?(listener: () => void): () => void
  /**
   * The adapter's store of durable streams (option `durable_streams`), kept in the adapter's own backend and
   * connections: the same one for every call, closed by `close()`. Every built-in adapter has it; a user
   * adapter without it cannot serve durable streams (the plugin refuses to start with `durable_streams`).
   * Optional.
   */
  durableStreamStore?(): Promise<DurableStreamStore>
  close(): Promise<void>
}

/** What `adapter.class` may name: a factory given the adapter config. */
export type AdapterFactory = (config: Record<string, unknown>) => StreamAdapter | Promise<StreamAdapter>
