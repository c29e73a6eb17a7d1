// The types an app writes against: what each trigger's or data function's handler receives, the trigger types,
// and each built-in adapter's config. Type-only: nothing here exists at run time.
import type { KvAdapterConfig } from './adapters/kv-config.js'
import type { RedisAdapterConfig } from './adapters/redis-config.js'
import type { StreamAdapter, StreamEventBody } from './adapters/adapter.js'
import type { FUNCTION_PATHS } from './api.js'
import type { UpdateOp } from './update-ops.js'

/** `store_method` → `storeMethod`. */
type CamelCase<S extends string> = S extends `${infer Head}_${infer Tail}` ? `${Head}${Capitalize<CamelCase<Tail>>}` : S

/** T's keys in snake_case (as in an iii config) or camelCase: options accept both spellings. */
export type EitherCase<T> = T & { [K in keyof T as K extends string ? CamelCase<K> : never]?: T[K] }

// ---------------------------------------------------------------------------------------------------------
// Triggers and the inputs their functions receive.

export type JoinTriggerType = 'streams:join' | 'stream:join'
export type LeaveTriggerType = 'streams:leave' | 'stream:leave'
/** The data-change trigger: runs after every set, update, delete and send on a stream (or one group or item of it). */
export type ChangeTriggerType = 'stream'
export type TriggerType = JoinTriggerType | LeaveTriggerType | ChangeTriggerType

/** Which changes a `stream` trigger sees; the condition function, when given, returning `false` skips one. */
export type ChangeTriggerConfig = {
  stream_name: string
  group_id?: string | null
  item_id?: string | null
  condition_function_id?: string | null
  /** Older spelling of `condition_function_id`. */
  condition_function_path?: string | null
}

export type TriggerRegistration =
  | { trigger_type: JoinTriggerType | LeaveTriggerType, function_path: string, config?: Record<string, unknown> }
  | { trigger_type: ChangeTriggerType, function_path: string, config: ChangeTriggerConfig }

/** What join and leave triggers' functions receive; `context` is what the auth function returned. */
export interface JoinInput<Context = unknown> {
  subscription_id: string
  stream_name: string
  group_id: string
  /** The item of an item subscription; null for a group subscription. */
  id: string | null
  context: Context
}
export type LeaveInput<Context = unknown> = JoinInput<Context>
/** A join trigger refuses the join by returning `{ unauthorized: true }` (or by throwing, by default). */
export type JoinResult = { unauthorized?: boolean } | null | undefined | void

/** What `stream` triggers' functions (and their condition functions) receive: the wire frame of the change. */
export interface ChangePayload {
  type: 'stream'
  timestamp: number
  streamName: string
  groupId: string
  id: string | null
  event: StreamEventBody
  /** The change's position in the group's log. */
  rev: number
}

// ---------------------------------------------------------------------------------------------------------
// Data functions: `stream::get` and friends, and the per-stream overrides `stream::get(<stream>)`.

interface ItemAddress { stream_name: string, group_id: string, item_id: string }

/** The input of each data function, by call. */
export interface DataFunctionInputs {
  get: ItemAddress
  set: ItemAddress & { data: unknown }
  delete: ItemAddress
  list: { stream_name: string, group_id: string }
  listGroups: { stream_name: string }
  listAll: Record<string, never>
  update: ItemAddress & { ops: UpdateOp[] }
  send: { stream_name: string, group_id: string, type: string, data?: unknown, id?: string | null }
}
export type DataCall = keyof DataFunctionInputs

/** A data function's path, every spelling: `stream::get`, `streams.get`, … */
export type DataFunctionPath<Call extends DataCall = DataCall> = Call extends DataCall ? (typeof FUNCTION_PATHS)[Call][number] : never
/** A path that takes over a data call for one stream when a function is registered there: `stream::get(todo)`. */
export type DataFunctionOverridePath<Call extends DataCall = DataCall> = Call extends DataCall ? `${DataFunctionPath<Call>}(${string})` : never

type CallOf<Path extends string> = { [Call in DataCall]: Path extends DataFunctionPath<Call> | DataFunctionOverridePath<Call> ? Call : never }[DataCall]
/** The input a data function (or its override) receives, by path. */
export type DataFunctionInput<Path extends string> = DataFunctionInputs[CallOf<Path>]

/**
 * A function to register. Its handler's input is typed by the path for the data functions' overrides
 * (`stream::set(todo)` gets `{ stream_name, group_id, item_id, data }`); elsewhere annotate it with the type of
 * what it serves: AuthInput, JoinInput, LeaveInput, ChangePayload.
 */
export interface FunctionRegistration<Path extends string = string, Input = any> {
  function_path: Path
  handler: (input: Input) => unknown
}

/** What a handler registered at `Path` takes when its input is not annotated. */
export type HandlerInput<Path extends string> = Path extends DataFunctionOverridePath ? DataFunctionInput<Path> : any
/** registerFunction's argument: a handler taking over a data function must accept that function's input. */
export type FunctionRegistrationAt<Path extends string, Input> = FunctionRegistration<Path, Input> &
  (Path extends DataFunctionOverridePath ? { handler: (input: DataFunctionInput<Path>) => unknown } : unknown)

export interface Registered { unregister(): void }

// ---------------------------------------------------------------------------------------------------------
// Adapters: `adapter.config` typed by `adapter.class` (or `adapter.name`).

export type KvStoreClass = 'modules::streams::adapters::KvStore' | 'modules::stream::adapters::KvStore' | 'kv'
export type RedisAdapterClass = 'modules::streams::adapters::RedisAdapter' | 'modules::stream::adapters::RedisAdapter' | 'redis'

/** KvStore's config as a user writes it (lib/adapters/kv-config.ts). */
export type KvStoreConfig = KvAdapterConfig

type BuiltInConfigKey = keyof KvStoreConfig | keyof RedisAdapterConfig
/** A config for an adapter of the app's own (`adapters`); the built-in adapters' keys are left to them. */
export type CustomAdapterConfig = Record<string, unknown> & { [Key in BuiltInConfigKey]?: never }

export type AdapterOption =
  | { class?: KvStoreClass, name?: undefined, config?: KvStoreConfig }
  | { name: KvStoreClass, class?: undefined, config?: KvStoreConfig }
  | { class: RedisAdapterClass, name?: undefined, config?: RedisAdapterConfig }
  | { name: RedisAdapterClass, class?: undefined, config?: RedisAdapterConfig }
  /** An adapter the app registers under `adapters: { [name]: factory }`. */
  | { class: string, name?: undefined, config?: CustomAdapterConfig }
  | { name: string, class?: undefined, config?: CustomAdapterConfig }
  | StreamAdapter
