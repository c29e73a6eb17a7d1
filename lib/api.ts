// The `streams` decorator: the data API, the function and trigger registry, and the engine's function paths.
import type { DeleteResult, ListAllResult, SetResult, StreamAdapter, StreamEventBody, UpdateResult } from './adapters/adapter.js'
import { ClosedError, InvalidArgumentError, InvalidOverrideResultError } from './errors.js'
import type { SyncState } from './hub.js'
import type { NormalizedOptions } from './options.js'
import { checkName, type Subscription } from './protocol.js'
import { Registry, type Registered, type TriggerRegistration } from './registry.js'
import type { Triggers } from './triggers.js'
import type { FunctionRegistrationAt, HandlerInput } from './types.js'
import { isPlainObject, type UpdateOp } from './update-ops.js'
import { checkValue } from './values.js'

export interface CustomEvent { type: string, data?: unknown }

export interface StreamsApi {
  /** The item's value, or null; `T` is what the app stored there (not checked at run time). */
  get<T = unknown>(stream: string, group: string, id: string): Promise<T | null>
  set(stream: string, group: string, id: string, data: unknown): Promise<SetResult>
  delete(stream: string, group: string, id: string): Promise<DeleteResult>
  /** The group's values in first-insert order; `T` is what the app stored there (not checked at run time). */
  getGroup<T = unknown>(stream: string, group: string): Promise<T[]>
  listGroups(stream: string): Promise<string[]>
  listAll(): Promise<ListAllResult>
  update(stream: string, group: string, id: string, ops: UpdateOp[]): Promise<UpdateResult>
  send(stream: string, group: string, event: CustomEvent, id?: string | null): Promise<void>
  registerFunction<Path extends string, Input = HandlerInput<Path>>(registration: FunctionRegistrationAt<Path, Input>): Registered
  registerTrigger(registration: TriggerRegistration): Registered
  call(functionPath: string, input?: unknown): Promise<unknown>
}

/** The engine's function ids for each data call, current and older spellings. */
export const FUNCTION_PATHS = {
  get: ['stream::get', 'streams.get', 'stream.get'],
  set: ['stream::set', 'streams.set', 'stream.set'],
  delete: ['stream::delete', 'streams.delete', 'stream.delete'],
  list: ['stream::list', 'streams.getGroup', 'streams.list', 'stream.list'],
  listGroups: ['stream::list_groups', 'streams.listGroups', 'streams.list_groups', 'stream.list_groups'],
  listAll: ['stream::list_all', 'streams.listAll', 'streams.list_all', 'stream.list_all'],
  update: ['stream::update', 'streams.update', 'stream.update'],
  send: ['stream::send', 'streams.send', 'stream.send']
} as const

/** The calls an app may take over for one stream by registering `<function id>(<stream>)`. */
export type OverridableCall = 'get' | 'set' | 'delete' | 'list' | 'listGroups' | 'update'

interface ApiHost {
  adapter: StreamAdapter
  registry: Registry
  triggers: Triggers
  options: NormalizedOptions
  isClosed(): boolean
}

type Input = Record<string, unknown>

function inputObject (input: unknown): Input {
  if (!isPlainObject(input)) throw new InvalidArgumentError('the input must be an object')
  return input
}

/** What a result-shape check answers for a result of the wrong shape. */
const INVALID = Symbol('invalid result')

/** The engine's result shapes, checked on what an override returns; a missing `old_value` is null. */
const OVERRIDE_RESULTS = {
  get: (result: unknown): unknown => result ?? null,
  list: (result: unknown): unknown[] | typeof INVALID => Array.isArray(result) ? result : INVALID,
  listGroups: (result: unknown): string[] | typeof INVALID => Array.isArray(result) && result.every(group => typeof group === 'string') ? result : INVALID,
  set: (result: unknown): SetResult | typeof INVALID => isPlainObject(result) && result.new_value !== undefined
    ? { old_value: result.old_value ?? null, new_value: result.new_value }
    : INVALID,
  update: (result: unknown): UpdateResult | typeof INVALID => {
    if (!isPlainObject(result) || result.new_value === undefined || (result.errors !== undefined && !Array.isArray(result.errors))) return INVALID
    const checked: UpdateResult = { old_value: result.old_value ?? null, new_value: result.new_value }
    if (result.errors !== undefined) checked.errors = result.errors as UpdateResult['errors']
    return checked
  },
  delete: (result: unknown): DeleteResult | typeof INVALID => isPlainObject(result) ? { old_value: result.old_value ?? null } : INVALID
} satisfies Record<OverridableCall, (result: unknown) => unknown>

type OverrideResult<C extends OverridableCall> = Exclude<ReturnType<typeof OVERRIDE_RESULTS[C]>, typeof INVALID>

const EXPECTED_RESULT: Record<OverridableCall, string> = {
  get: 'a value',
  list: 'an array',
  listGroups: 'an array of group ids',
  set: '{ old_value, new_value }',
  update: '{ old_value, new_value, errors? }',
  delete: '{ old_value }'
}

/** The data API plus what the socket side needs from it: a join's sync state, read through overrides. */
export interface StreamsCore {
  api: StreamsApi
  syncState(sub: Subscription): Promise<SyncState>
}

export function createStreamsApi (host: ApiHost): StreamsCore {
  const { adapter, registry, triggers, options } = host
  const name = (kind: 'stream' | 'group' | 'item', value: unknown): string => checkName(kind, value, options.maxNameLength)

  function open (): void {
    if (host.isClosed()) throw new ClosedError()
  }

  /**
   * Object values lacking `id` get `id: item_id`: the stock clients merge group state by `data.id`.
   * Every value about to be stored passes the depth and size limits here.
   */
  function prepare (id: string) {
    return (value: unknown): unknown => {
      checkValue('the value', value, options.limits)
      if (!options.injectId || !isPlainObject(value) || Object.hasOwn(value, 'id')) return value
      return { ...value, id }
    }
  }

  function checkOps (ops: unknown): asserts ops is UpdateOp[] {
    if (!Array.isArray(ops)) throw new InvalidArgumentError('ops must be an array of update operations')
    if (ops.length > options.limits.maxUpdateOps) throw new InvalidArgumentError(`more than ${options.limits.maxUpdateOps} update operations`)
    for (const op of ops) if (isPlainObject(op)) checkValue('an update operation\'s value', op.value ?? null, options.limits)
  }

  /** The function registered to take over `call` for `stream` (any spelling of the call), or null. */
  function overrideOf (call: OverridableCall, stream: string): string | null {
    for (const path of FUNCTION_PATHS[call]) {
      const override = `${path}(${stream})`
      if (registry.has(override)) return override
    }
    return null
  }

  /** Calls an override with the engine's input and checks its result against the call's result shape. */
  async function callOverride<C extends OverridableCall> (call: C, path: string, input: Input): Promise<OverrideResult<C>> {
    const result = await registry.call(path, input)
    const checked = OVERRIDE_RESULTS[call](result)
    if (checked === INVALID) throw new InvalidOverrideResultError(path, `${describe(result)} where ${EXPECTED_RESULT[call]} was expected`)
    return checked as OverrideResult<C>
  }

  /**
   * A change an override made elsewhere reaches sockets, other nodes and the `stream` triggers as the
   * adapter would have emitted it: create or update by the old value, delete only when something was removed.
   */
  async function publishChange (stream: string, group: string, id: string, body: StreamEventBody | null): Promise<void> {
    if (body === null) return
    triggers.fireChange(await adapter.publish(stream, group, id, body))
  }

  const api: StreamsApi = {
    async get<T> (stream: string, group: string, id: string) {
      open()
      name('stream', stream); name('group', group); name('item', id)
      const override = overrideOf('get', stream)
      if (override !== null) return await callOverride('get', override, { stream_name: stream, group_id: group, item_id: id }) as T | null
      return await adapter.get(stream, group, id) as T | null
    },

    async set (stream, group, id, data) {
      open()
      name('stream', stream); name('group', group); name('item', id)
      if (data === undefined) throw new InvalidArgumentError('data must be a JSON value (use delete to remove an item)')
      const value = prepare(id)(data)
      const override = overrideOf('set', stream)
      if (override !== null) {
        const result = await callOverride('set', override, { stream_name: stream, group_id: group, item_id: id, data: value })
        await publishChange(stream, group, id, { type: result.old_value === null ? 'create' : 'update', data: result.new_value })
        return result
      }
      const { event, ...result } = await adapter.set(stream, group, id, value)
      triggers.fireChange(event)
      return result
    },

    async delete (stream, group, id) {
      open()
      name('stream', stream); name('group', group); name('item', id)
      const override = overrideOf('delete', stream)
      if (override !== null) {
        const result = await callOverride('delete', override, { stream_name: stream, group_id: group, item_id: id })
        await publishChange(stream, group, id, result.old_value === null ? null : { type: 'delete', data: result.old_value })
        return result
      }
      const { event, ...result } = await adapter.delete(stream, group, id)
      triggers.fireChange(event)
      return result
    },

    async getGroup<T> (stream: string, group: string) {
      open()
      name('stream', stream); name('group', group)
      const override = overrideOf('list', stream)
      if (override !== null) return await callOverride('list', override, { stream_name: stream, group_id: group }) as T[]
      return await adapter.getGroup(stream, group) as T[]
    },

    async listGroups (stream) {
      open()
      name('stream', stream)
      const override = overrideOf('listGroups', stream)
      if (override !== null) return callOverride('listGroups', override, { stream_name: stream })
      return adapter.listGroups(stream)
    },

    async listAll () {
      open()
      return adapter.listAll()
    },

    async update (stream, group, id, ops) {
      open()
      name('stream', stream); name('group', group); name('item', id)
      checkOps(ops)
      const override = overrideOf('update', stream)
      if (override !== null) {
        const result = await callOverride('update', override, { stream_name: stream, group_id: group, item_id: id, ops })
        await publishChange(stream, group, id, { type: result.old_value === null ? 'create' : 'update', data: result.new_value })
        return result
      }
      const { event, ...result } = await adapter.update(stream, group, id, ops, prepare(id))
      triggers.fireChange(event)
      return result
    },

    async send (stream, group, event, id = null) {
      open()
      name('stream', stream); name('group', group)
      if (id !== null) name('item', id)
      if (!isPlainObject(event) || typeof event.type !== 'string' || event.type === '') throw new InvalidArgumentError('event must be { type: string, data }')
      checkValue('the event data', event.data ?? null, options.limits)
      triggers.fireChange(await adapter.publish(stream, group, id, { type: 'event', event: { type: event.type, data: event.data ?? null } }))
    },

    registerFunction: (registration) => registry.registerFunction(registration),
    registerTrigger: (registration) => registry.registerTrigger(registration),
    call: (functionPath, input) => registry.call(functionPath, input)
  }

  /** The engine's function ids, taking its snake_case inputs; overrides apply inside the API calls. */
  const functions: Record<keyof typeof FUNCTION_PATHS, (input: Input) => Promise<unknown>> = {
    get: (input) => api.get(input.stream_name as string, input.group_id as string, input.item_id as string),
    set: (input) => api.set(input.stream_name as string, input.group_id as string, input.item_id as string, input.data),
    delete: (input) => api.delete(input.stream_name as string, input.group_id as string, input.item_id as string),
    list: (input) => api.getGroup(input.stream_name as string, input.group_id as string),
    listGroups: (input) => api.listGroups(input.stream_name as string),
    listAll: () => api.listAll(),
    update: (input) => api.update(input.stream_name as string, input.group_id as string, input.item_id as string, input.ops as UpdateOp[]),
    send: async (input) => {
      await api.send(input.stream_name as string, input.group_id as string, { type: input.type as string, data: input.data }, (input.id ?? null) as string | null)
      return null
    }
  }
  for (const [call, paths] of Object.entries(FUNCTION_PATHS) as Array<[keyof typeof FUNCTION_PATHS, readonly string[]]>) {
    for (const path of paths) {
      registry.registerFunction({ function_path: path, handler: async (input: unknown) => functions[call](inputObject(input ?? {})) })
    }
  }

  /**
   * A join's sync state. The revision and timestamp always come from the adapter's log (an override-handled
   * write publishes through it); the data comes from the `list`/`get` override when one is registered, read
   * after them, so a change racing the join is sent again after the sync rather than lost.
   */
  async function syncState (sub: Subscription): Promise<SyncState> {
    const { streamName: stream, groupId: group, id } = sub
    if (id === null) {
      const snapshot = await adapter.snapshotGroup(stream, group)
      const override = overrideOf('list', stream)
      if (override === null) return { data: snapshot.items, rev: snapshot.rev, timestamp: snapshot.timestamp, shared: true }
      const items = await callOverride('list', override, { stream_name: stream, group_id: group })
      return { data: items, rev: snapshot.rev, timestamp: snapshot.timestamp, shared: false }
    }
    const snapshot = await adapter.snapshotItem(stream, group, id)
    const override = overrideOf('get', stream)
    const value = override === null ? snapshot.value : await callOverride('get', override, { stream_name: stream, group_id: group, item_id: id })
    return { data: value, rev: snapshot.rev, timestamp: snapshot.timestamp, shared: false }
  }

  return { api, syncState }
}

function describe (value: unknown): string {
  if (value === undefined) return 'nothing'
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  return typeof value === 'object' ? 'an object of another shape' : `a ${typeof value}`
}
