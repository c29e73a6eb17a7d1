// Feed readers for the feed tests: the official Durable Streams client feeding the official MaterializedState,
// recording what each reader got so a test can check it got every change once, in order.
import { stream, type LiveMode, type StreamResponse } from '@durable-streams/client'
import { MaterializedState } from '@durable-streams/state'
import type { StreamsApi } from '../../lib/index.js'

export interface FeedMessage {
  type?: string
  key?: string
  value?: unknown
  old_value?: unknown
  event?: { type: string, data: unknown }
  headers: { operation?: string, control?: string, timestamp?: string, offset?: string }
}

/**
 * One reader of one group feed. `start()` reads from its last offset (-1 at first) with the given live mode;
 * `stop()` drops the connection as a network failure would; `start()` again resumes. A snapshot-start message
 * resets the state (a reader that restarts from -1 after a 410 rebuilds it).
 */
export class FeedReader {
  state = new MaterializedState()
  offset = '-1'
  /** Change and event messages since the last snapshot-start (its inserts included), in arrival order. */
  readonly messages: FeedMessage[] = []
  /** Every Stream-Next-Offset the reader was handed, in order. */
  readonly offsets: string[] = []
  /** Status codes of terminal errors (410 …). */
  readonly failures: number[] = []
  snapshots = 0
  /** Sessions ended by a cut connection and started again from the last offset. */
  resumed = 0
  /** The offset the last snapshot ended at; the messages after it are the log from there. */
  snapshotOffset: string | null = null
  /** Change and event messages after the last snapshot-end, in arrival order. */
  readonly tail: FeedMessage[] = []
  private session: StreamResponse | null = null
  private running: Promise<void> | null = null
  private wanted = false

  constructor (readonly url: string, readonly live: LiveMode, readonly headers: Record<string, string> = {}) {}

  async start (): Promise<void> {
    this.wanted = true
    let response: StreamResponse
    try {
      response = await stream({ url: this.url, offset: this.offset, live: this.live, headers: this.headers, backoffOptions: { initialDelay: 20, maxDelay: 250, multiplier: 2 } })
    } catch (err) {
      this.failures.push((err as { status?: number }).status ?? 0)
      return
    }
    if (!this.wanted) {
      response.cancel()
      return
    }
    this.session = response
    response.subscribeJson<FeedMessage>((batch) => {
      if (this.session !== response) return
      for (const message of batch.items) this.take(message)
      if (this.offsets[this.offsets.length - 1] !== batch.offset) this.offsets.push(batch.offset)
      this.offset = batch.offset
    })
    this.running = response.closed.catch(async (err: { status?: number }) => {
      if (this.session !== response) return
      // A connection cut mid-response (a killed server) ends the client's session: like an app would, start
      // again from the last offset. An HTTP refusal (410 …) is recorded and ends the reader.
      if (err.status === undefined) {
        this.resumed++
        await new Promise(resolve => setTimeout(resolve, 50))
        if (this.wanted && this.session === response) await this.start()
      } else {
        this.failures.push(err.status)
      }
    })
  }

  private take (message: FeedMessage): void {
    if (message.headers.control === 'snapshot-start') {
      this.state = new MaterializedState()
      this.messages.length = 0
      this.tail.length = 0
      this.snapshotOffset = null
      this.snapshots++
    } else if (message.headers.control === 'snapshot-end') {
      this.snapshotOffset = message.headers.offset ?? null
    } else if (this.snapshotOffset !== null) {
      this.tail.push(message)
    }
    // Control and custom-event messages go through apply too: it must take them without changing items.
    this.state.apply(message as Parameters<MaterializedState['apply']>[0])
    if (message.headers.control === undefined) this.messages.push(message)
  }

  async stop (): Promise<void> {
    this.wanted = false
    const session = this.session
    this.session = null
    session?.cancel()
    await this.running
  }

  /** The group as MaterializedState has it: item values keyed by id. */
  items (type: string): Map<string, unknown> {
    return this.state.getType(type) as Map<string, unknown>
  }

  events (): FeedMessage[] {
    return this.messages.filter(message => message.headers.operation === 'event')
  }
}

/** getGroup's answer as a map by id (items carry their id). */
export function byId (items: unknown[]): Map<string, unknown> {
  return new Map(items.map(item => [(item as { id: string }).id, item]))
}

/** A log entry as the feed must deliver it: [operation, key, value or event]. */
export function expected (record: { id: string | null, event: { type: string, data?: unknown, event?: unknown } }): unknown[] {
  const operation = ({ create: 'insert', update: 'update', delete: 'delete' } as Record<string, string>)[record.event.type] ?? 'event'
  const payload = operation === 'event' ? record.event.event : operation === 'delete' ? null : record.event.data
  return [operation, record.id ?? undefined, payload]
}

/** A received message in the same form as `expected`. */
export function received (message: FeedMessage): unknown[] {
  return [message.headers.operation, message.key, message.headers.operation === 'event' ? message.event : message.value]
}

/** The revision an offset stands for (tests know the layout; readers must not rely on it). */
export function revOf (offset: string): number {
  return Number(offset.split('_')[0])
}

/** Whether each offset sorts strictly after the one before it. */
export function strictlyIncreasing (offsets: string[]): boolean {
  return offsets.every((offset, i) => i === 0 || offset > offsets[i - 1])
}

/** A seeded pseudo-random generator in [0, 1), so a failing run can be replayed. */
export function seededRandom (seed: number): () => number {
  let state = seed
  return () => {
    state = (state * 1103515245 + 12345) % 2 ** 31
    return state / 2 ** 31
  }
}

/** One random write to `todo/<group>` among 15 items: set, update, delete or a custom event `tick`, all carrying n. */
export async function randomWrite (streams: StreamsApi, group: string, random: () => number, n: number): Promise<void> {
  const id = `i${Math.floor(random() * 15)}`
  const roll = random()
  if (roll < 0.5) await streams.set('todo', group, id, { id, n })
  else if (roll < 0.7) await streams.update('todo', group, id, [{ type: 'set', path: 'n', value: n }, { type: 'set', path: 'id', value: id }])
  else if (roll < 0.85) await streams.delete('todo', group, id)
  else await streams.send('todo', group, { type: 'tick', data: { n } }, random() < 0.5 ? id : null)
}
