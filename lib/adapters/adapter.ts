// The StreamAdapter contract: the only place that knows where data lives.
// Every backend (memory, SQLite, Redis, a user's own) implements it; test/adapters/contract.ts checks it.

import type { UpdateOp, UpdateOpError } from '../update-ops.js'

/** A stored change kind, as it appears in the wire envelope's `event.type`. */
export type ChangeKind = 'create' | 'update' | 'delete'

/** The `event` member of a wire envelope, for changes and custom events. */
export type StreamEventBody =
  | { type: ChangeKind, data: unknown }
  | { type: 'event', event: { type: string, data: unknown } }

/**
 * One committed change (or custom event) of a group, as the adapter's feed delivers it.
 * `timestamp` is epoch ms and strictly increases within a group, in commit order, for changes and custom
 * events alike. `rev` is the group's revision: it grows by one with every stored change and is left as is
 * by custom events (they are not stored).
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
  rev: number
  timestamp: number
}

/** One item with the revision and timestamp of its group's last change, read atomically. */
export interface ItemSnapshot {
  value: unknown
  rev: number
  timestamp: number
}

export interface SetResult { old_value: unknown, new_value: unknown }
export interface DeleteResult { old_value: unknown }
export interface UpdateResult { old_value: unknown, new_value: unknown, errors?: UpdateOpError[] }
export interface ListAllResult { stream: Array<{ id: string, groups: string[] }>, count: number }

export type EventListener = (event: StreamEvent) => void

export interface StreamAdapter {
  /** Resolves once the backend is reachable and loaded; rejects with a coded error otherwise. */
  start?(): Promise<void>
  get(stream: string, group: string, id: string): Promise<unknown>
  /** Stores `value` (already prepared by the caller) and emits create or update. Resolves once durable. */
  set(stream: string, group: string, id: string, value: unknown): Promise<SetResult>
  /** Removes the item; emits delete with the old value only if something was removed. */
  delete(stream: string, group: string, id: string): Promise<DeleteResult>
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
  update(stream: string, group: string, id: string, ops: UpdateOp[], prepare?: (value: unknown) => unknown): Promise<UpdateResult>
  /** Emits a custom event to the group (and to subscribers of item `id` when given); nothing is stored. */
  publish(stream: string, group: string, id: string | null, event: { type: string, data: unknown }): Promise<void>
  /** The group's items with the rev/timestamp of the last change they include. */
  snapshotGroup(stream: string, group: string): Promise<GroupSnapshot>
  /** One item (or null) with its group's rev/timestamp. */
  snapshotItem(stream: string, group: string, id: string): Promise<ItemSnapshot>
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
  close(): Promise<void>
}

/** What `adapter.class` may name: a factory given the adapter config. */
export type AdapterFactory = (config: Record<string, unknown>) => StreamAdapter | Promise<StreamAdapter>
