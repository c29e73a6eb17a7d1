// The engine's trigger rules: join triggers decide whether a subscription may open, leave triggers are told
// when it closes, and data-change (`stream`) triggers get every committed change as its wire frame.
import type { FastifyBaseLogger } from 'fastify'
import type { StreamEvent } from './adapters/adapter.js'
import type { NormalizedOptions } from './options.js'
import type { Subscription } from './protocol.js'
import type { Registry } from './registry.js'
import type { ChangePayload, JoinInput } from './types.js'

export type { ChangePayload, JoinInput }

function joinInput (sub: Subscription, context: unknown): JoinInput {
  return { subscription_id: sub.subscriptionId, stream_name: sub.streamName, group_id: sub.groupId, id: sub.id, context }
}

function refuses (result: unknown): boolean {
  return result !== null && typeof result === 'object' && (result as { unauthorized?: unknown }).unauthorized === true
}

export class Triggers {
  constructor (
    private readonly registry: Registry,
    private readonly options: NormalizedOptions,
    private readonly log: FastifyBaseLogger
  ) {}

  /**
   * Runs every join trigger, one after another in registration order, even after one refused (each may
   * record or count the attempt, as in the engine); the join may go ahead only if none refused. A trigger
   * that throws refuses unless `joinFailure` is 'allow'.
   */
  async authorizeJoin (sub: Subscription, context: unknown): Promise<boolean> {
    const input = joinInput(sub, context)
    let allowed = true
    for (const trigger of this.registry.triggersOf('join')) {
      try {
        if (refuses(await this.registry.call(trigger.functionPath, input))) allowed = false
      } catch (err) {
        this.log.warn({ err, function_path: trigger.functionPath }, 'fastify-streams: join trigger failed')
        if (this.options.joinFailure === 'deny') allowed = false
      }
    }
    return allowed
  }

  /** Runs every leave trigger in registration order; errors are logged, never thrown. */
  async runLeave (sub: Subscription, context: unknown): Promise<void> {
    const input = joinInput(sub, context)
    for (const trigger of this.registry.triggersOf('leave')) {
      try {
        await this.registry.call(trigger.functionPath, input)
      } catch (err) {
        this.log.warn({ err, function_path: trigger.functionPath }, 'fastify-streams: leave trigger failed')
      }
    }
  }

  /**
   * Fires the `stream` triggers matching a committed change, after the write and on the node that wrote;
   * the writer never waits for them nor sees their errors. They run one after another in registration order,
   * each after its condition (skipped only when the condition returns exactly false, or throws).
   */
  fireChange (event: StreamEvent | null): void {
    if (event === null) return
    const triggers = this.registry.changeTriggers(event.stream, event.group, event.id)
    if (triggers.length === 0) return
    const payload: ChangePayload = {
      type: 'stream',
      timestamp: event.timestamp,
      streamName: event.stream,
      groupId: event.group,
      id: event.id,
      event: event.event,
      rev: event.rev
    }
    const run = async (): Promise<void> => {
      for (const trigger of triggers) {
        try {
          const condition = trigger.filter?.conditionPath
          if (condition != null && await this.registry.call(condition, payload) === false) continue
          await this.registry.call(trigger.functionPath, payload)
        } catch (err) {
          this.log.error({ err, function_path: trigger.functionPath }, 'fastify-streams: stream trigger failed')
        }
      }
    }
    run().catch(() => {}) // run() catches every error itself
  }
}
