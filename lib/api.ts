// The `streams` decorator: the data API, the function and trigger registry, and the engine's function paths.
import type { FastifyBaseLogger } from 'fastify'
import type { DeleteResult, ListAllResult, SetResult, StreamAdapter, StreamEvent, UpdateResult } from './adapters/adapter.js'
import { ClosedError, InvalidArgumentError } from './errors.js'
import type { NormalizedOptions } from './options.js'
import { checkName } from './protocol.js'
import { Registry, type Registered, type TriggerRegistration } from './registry.js'
import type { FunctionRegistrationAt, HandlerInput } from './types.js'
import { isPlainObject, type UpdateOp } from './update-ops.js'

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

interface ApiHost {
  adapter: StreamAdapter
  registry: Registry
  options: NormalizedOptions
  log: FastifyBaseLogger
  isClosed(): boolean
}

type Input = Record<string, unknown>

function inputObject (input: unknown): Input {
  if (!isPlainObject(input)) throw new InvalidArgumentError('the input must be an object')
  return input
}

export function createStreamsApi (host: ApiHost): StreamsApi {
  const { adapter, registry, options, log } = host
  const name = (kind: 'stream' | 'group' | 'item', value: unknown): string => checkName(kind, value, options.maxNameLength)

  function open (): void {
    if (host.isClosed()) throw new ClosedError()
  }

  /** Object values lacking `id` get `id: item_id`: the stock clients merge group state by `data.id`. */
  function prepare (id: string) {
    return (value: unknown): unknown => {
      if (!options.injectId || !isPlainObject(value) || Object.hasOwn(value, 'id')) return value
      return { ...value, id }
    }
  }

  /** Data-change triggers run after the write, on the node that wrote; their errors never reach the writer. */
  function fireChange (committed: StreamEvent | null): void {
    if (committed === null) return
    const { stream, group, id, timestamp, event } = committed
    const triggers = registry.changeTriggers(stream, group, id)
    if (triggers.length === 0) return
    const payload = { type: 'stream', timestamp, streamName: stream, groupId: group, id, event }
    for (const trigger of triggers) {
      const run = async (): Promise<void> => {
        const condition = trigger.filter?.conditionPath
        if (condition != null && await registry.call(condition, payload) === false) return
        await registry.call(trigger.functionPath, payload)
      }
      run().catch((err) => log.error({ err, function_path: trigger.functionPath }, 'fastify-streams: stream trigger failed'))
    }
  }

  const api: StreamsApi = {
    async get<T> (stream: string, group: string, id: string) {
      open()
      return await adapter.get(name('stream', stream), name('group', group), name('item', id)) as T | null
    },

    async set (stream, group, id, data) {
      open()
      name('stream', stream); name('group', group); name('item', id)
      if (data === undefined) throw new InvalidArgumentError('data must be a JSON value (use delete to remove an item)')
      const value = prepare(id)(data)
      const { event, ...result } = await adapter.set(stream, group, id, value)
      fireChange(event)
      return result
    },

    async delete (stream, group, id) {
      open()
      const { event, ...result } = await adapter.delete(name('stream', stream), name('group', group), name('item', id))
      fireChange(event)
      return result
    },

    async getGroup<T> (stream: string, group: string) {
      open()
      return await adapter.getGroup(name('stream', stream), name('group', group)) as T[]
    },

    async listGroups (stream) {
      open()
      return adapter.listGroups(name('stream', stream))
    },

    async listAll () {
      open()
      return adapter.listAll()
    },

    async update (stream, group, id, ops) {
      open()
      name('stream', stream); name('group', group); name('item', id)
      if (!Array.isArray(ops)) throw new InvalidArgumentError('ops must be an array of update operations')
      const { event, ...result } = await adapter.update(stream, group, id, ops, prepare(id))
      fireChange(event)
      return result
    },

    async send (stream, group, event, id = null) {
      open()
      name('stream', stream); name('group', group)
      if (id !== null) name('item', id)
      if (!isPlainObject(event) || typeof event.type !== 'string' || event.type === '') throw new InvalidArgumentError('event must be { type: string, data }')
      fireChange(await adapter.publish(stream, group, id, { type: 'event', event: { type: event.type, data: event.data ?? null } }))
    },

    registerFunction: (registration) => registry.registerFunction(registration),
    registerTrigger: (registration) => registry.registerTrigger(registration),
    call: (functionPath, input) => registry.call(functionPath, input)
  }

  /**
   * The engine's function ids, taking its snake_case inputs. A function registered at `<id>(<stream>)`
   * (e.g. `stream::get(todo)`) takes over that call for that stream, as in the engine.
   */
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
      registry.registerFunction({
        function_path: path,
        handler: async (raw: unknown) => {
          const input = inputObject(raw ?? {})
          const override = typeof input.stream_name === 'string' ? `${path}(${input.stream_name})` : null
          if (override !== null && registry.has(override)) return registry.call(override, input)
          return functions[call](input)
        }
      })
    }
  }
  return api
}
