// Functions and triggers by path, as the engine names them: registerFunction, registerTrigger, call.
import { FunctionExistsError, FunctionNotFoundError, InvalidArgumentError, InvalidTriggerError } from './errors.js'
import type { FunctionRegistration, Registered, TriggerRegistration } from './types.js'

export type { FunctionRegistration, Registered, TriggerRegistration }
export type Handler = (input: any) => unknown

export type TriggerKind = 'join' | 'leave' | 'change'

const TRIGGER_KINDS: Record<string, TriggerKind> = {
  'streams:join': 'join',
  'stream:join': 'join',
  'streams:leave': 'leave',
  'stream:leave': 'leave',
  stream: 'change'
}

/** A data-change trigger's filter: a stream, optionally one group and one item. */
export interface ChangeFilter {
  streamName: string
  groupId: string | null
  itemId: string | null
  conditionPath: string | null
}

export interface Trigger {
  kind: TriggerKind
  functionPath: string
  filter: ChangeFilter | null
}

function optionalString (config: Record<string, unknown>, key: string): string | null {
  const value = config[key]
  if (value === undefined || value === null || value === '') return null
  if (typeof value !== 'string') throw new InvalidTriggerError(`config.${key} must be a string`)
  return value
}

function changeFilter (config: Record<string, unknown> | undefined): ChangeFilter {
  if (config === undefined || config === null || typeof config !== 'object') throw new InvalidTriggerError('the stream trigger needs config.stream_name')
  const streamName = optionalString(config, 'stream_name')
  if (streamName === null) throw new InvalidTriggerError('the stream trigger needs config.stream_name')
  return {
    streamName,
    groupId: optionalString(config, 'group_id'),
    itemId: optionalString(config, 'item_id'),
    conditionPath: optionalString(config, 'condition_function_id') ?? optionalString(config, 'condition_function_path')
  }
}

export class Registry {
  private readonly functions = new Map<string, Handler>()
  private readonly triggers: Trigger[] = []

  registerFunction (registration: FunctionRegistration): Registered {
    const { function_path: path, handler } = registration ?? {}
    if (typeof path !== 'string' || path === '') throw new InvalidArgumentError('function_path must be a non-empty string')
    if (typeof handler !== 'function') throw new InvalidArgumentError('handler must be a function')
    if (this.functions.has(path)) throw new FunctionExistsError(path)
    this.functions.set(path, handler)
    return { unregister: () => { if (this.functions.get(path) === handler) this.functions.delete(path) } }
  }

  registerTrigger (registration: TriggerRegistration): Registered {
    const { trigger_type: type, function_path: path, config } = registration ?? {}
    const kind = typeof type === 'string' ? TRIGGER_KINDS[type] : undefined
    if (kind === undefined) throw new InvalidTriggerError(`unknown trigger_type ${JSON.stringify(type)} (expected streams:join, streams:leave or stream)`)
    if (typeof path !== 'string' || path === '') throw new InvalidTriggerError('function_path must be a non-empty string')
    const trigger: Trigger = { kind, functionPath: path, filter: kind === 'change' ? changeFilter(config) : null }
    this.triggers.push(trigger)
    return {
      unregister: () => {
        const index = this.triggers.indexOf(trigger)
        if (index >= 0) this.triggers.splice(index, 1)
      }
    }
  }

  has (path: string): boolean {
    return this.functions.has(path)
  }

  async call (path: string, input: unknown): Promise<unknown> {
    const handler = this.functions.get(path)
    if (handler === undefined) throw new FunctionNotFoundError(path)
    return await handler(input)
  }

  triggersOf (kind: TriggerKind): Trigger[] {
    return this.triggers.filter(trigger => trigger.kind === kind)
  }

  /** The data-change triggers whose filter matches a change of (stream, group, item). */
  changeTriggers (stream: string, group: string, id: string | null): Trigger[] {
    return this.triggers.filter(({ kind, filter }) => kind === 'change' && filter !== null &&
      filter.streamName === stream &&
      (filter.groupId === null || filter.groupId === group) &&
      (filter.itemId === null || filter.itemId === id))
  }
}
