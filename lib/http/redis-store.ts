// Durable streams in the RedisAdapter's Redis (keys `${key_prefix}ds:*`), over the adapter's own connections:
// its command connection for the data, its subscriber connection for the change channel. Every node serves
// every stream. No lock: each operation is an optimistic transaction on the keys of the streams it touches
// (it reads them, then one Lua script writes only if none of what it read changed, else the operation runs
// again), so operations on different streams run at once and those on one stream apply one after another.
// Appends to one stream handed in together share a transaction, and start from the values this node last
// read or wrote (checked at commit like any read): a lone writer's append waits for one round trip.
import { createHash } from 'node:crypto'
import type { Redis } from 'ioredis'
import { BackendUnavailableError } from '../errors.js'
import { OperationGroup, SerialBackend, StreamEngine, answer, payloadBytes, runOperations, storedPayload, withinBudget, type StoredEntry, type StoredStream, type StreamBackend, type StreamTransaction, type GroupTransaction, type WaitingOperation } from './stream-engine.js'
import { RecentMap, type Position, type ProducerState } from './store.js'

/** Index members a read looks at per call (a read asks again for more). */
const ENTRY_PAGE = 64
/** Runs of one operation that lost to concurrent writers before it gives up (503). */
const MAX_ATTEMPTS = 50
/** The longest pause between two runs of an operation that lost (a random part of it, growing with the runs). */
const MAX_BACKOFF_MS = 20
/** Values (stream names, rows, producer states) this node remembers from its last operations. */
const MAX_REMEMBERED_VALUES = 4096

/**
 * Writes the operation's commands if every value it read is still the same. ARGV: the number of checks, then
 * per check its kind ('k' a string key, 'h' a hash field), key index, field and the value read ('' when there
 * was none, else '=' and the value); then per write its argument count, the command, its key index and its
 * arguments. Answers 1, or 0 (nothing written) when a value read has changed.
 */
const COMMIT = `
local at = 2
for _ = 1, tonumber(ARGV[1]) do
  local key = KEYS[tonumber(ARGV[at + 1])]
  local current
  if ARGV[at] == 'h' then current = redis.call('hget', key, ARGV[at + 2]) else current = redis.call('get', key) end
  local expected = ARGV[at + 3]
  if (current == false and expected ~= '') or (current ~= false and expected ~= '=' .. current) then return 0 end
  at = at + 4
end
while at <= #ARGV do
  local count = tonumber(ARGV[at])
  local command = { ARGV[at + 1], KEYS[tonumber(ARGV[at + 2])] }
  for i = 3, count do command[i] = ARGV[at + i] end
  redis.call(unpack(command))
  at = at + count + 1
end
return 1
`
const COMMIT_SHA = createHash('sha1').update(COMMIT).digest('hex')

/** What the RedisAdapter lends the store (lib/adapters/redis.ts). */
export interface RedisHost {
  keyPrefix: string
  /** The adapter's command connection; throws once the adapter is closed or not connected. */
  command (): Redis
  /** Subscribes `channel` on the adapter's subscriber connection (again after a reconnection); its messages go to `onMessage`. */
  listen (channel: string, onMessage: (message: string) => void): Promise<void>
  /** Tells `listener` when the subscriber connection came back: messages may have been missed. */
  onResync (listener: () => void): () => void
}

/** The operation read something another one changed before it could commit: it runs again. */
class Conflict extends Error {}

type Argument = string | Buffer

/** Whether `err` is one of ours (a protocol refusal, already coded) rather than a Redis failure. */
function coded (err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && code.startsWith('STREAMS_ERR_')
}

class RedisBackend extends SerialBackend implements StreamBackend {
  private readonly channel: string
  private readonly prefix: string
  /** Per stream name, the end of this node's queue of operations on it. */
  private readonly queues = new Map<string, Promise<void>>()
  /** Per stream name, the appends gathering for the next transaction on it, and the bytes of their bodies. */
  private readonly gathering = new Map<string, OperationGroup>()
  /**
   * The values of string keys and hash fields (by slot, see slotOf) this node last read or committed. Appends
   * start from them instead of asking Redis: each is checked at commit like a value read, so one that another
   * node changed since costs a conflict and a run on fresh values, never a wrong write.
   */
  private readonly remembered = new RecentMap<string | null>(MAX_REMEMBERED_VALUES)
  /** Streams changed in this turn: each is announced once when it ends (a woken reader reads to the tail anyway). */
  private readonly changed = new Set<string>()
  private stopResync: () => void = () => {}

  constructor (private readonly host: RedisHost) {
    super()
    this.prefix = `${host.keyPrefix}ds:`
    this.channel = `${this.prefix}changes`
  }

  async start (): Promise<void> {
    await this.host.listen(this.channel, (name) => this.emit(name))
    // Changes published while the subscriber was away were missed: every live reader reads again.
    this.stopResync = this.host.onResync(() => this.emit(null))
  }

  /** Runs `task` after this node's earlier operations on `name` (they would only conflict with each other). */
  private inOrder (name: string, task: () => Promise<void>): void {
    const tail = (this.queues.get(name) ?? Promise.resolve()).then(task)
    this.queues.set(name, tail)
    tail.then(() => { if (this.queues.get(name) === tail) this.queues.delete(name) }, () => {})
  }

  /**
   * Appends handed in while an operation on their stream runs gather for the next transaction on it: one round
   * trip for them all, and one for each other operation. Each waits for the commit of its transaction.
   */
  run<T> (name: string, work: (tx: StreamTransaction) => Promise<T>, appendBytes?: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const operation: WaitingOperation = { work, resolve: resolve as (value: unknown) => void, reject }
      const append = appendBytes !== undefined
      if (append && this.gathering.get(name)?.add(operation, appendBytes) === true) return
      const group = new OperationGroup()
      group.add(operation, appendBytes ?? 0)
      // Appends handed in after another operation run after it.
      if (append) this.gathering.set(name, group)
      else this.gathering.delete(name)
      this.inOrder(name, async () => {
        if (this.gathering.get(name) === group) this.gathering.delete(name)
        await this.runGroup(group.operations, append)
      })
    })
  }

  /**
   * Runs the operations one after another in one transaction (appends from remembered values), again on
   * fresh ones after a conflict. A refused operation leaves nothing; the others commit. Never throws.
   */
  private async runGroup (group: WaitingOperation[], recall: boolean): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      let tx: RedisTransaction | null = null
      try {
        tx = new RedisTransaction(this.host.command(), this.prefix, this.remembered, recall && attempt === 1)
        // A refusal is the operation's own; a Redis failure or a conflict is the group's.
        const outcomes = await runOperations(group, tx, error => !coded(error))
        await tx.commit()
        tx.remember()
        answer(group, outcomes)
        return
      } catch (err) {
        tx?.forget()
        let failure: Error | null = null
        if (!(err instanceof Conflict)) failure = new BackendUnavailableError(`durable stream operation failed: ${(err as Error).message}`)
        else if (attempt === MAX_ATTEMPTS) failure = new BackendUnavailableError(`a durable stream operation lost to concurrent writers ${MAX_ATTEMPTS} times`)
        if (failure !== null) {
          for (const operation of group) operation.reject(failure)
          return
        }
        await new Promise(resolve => setTimeout(resolve, Math.random() * Math.min(attempt, MAX_BACKOFF_MS)))
      }
    }
  }

  async names (): Promise<string[]> {
    return this.host.command().smembers(`${this.prefix}names`)
  }

  publish (name: string): void {
    if (this.changed.size === 0) process.nextTick(() => this.announce())
    this.changed.add(name)
  }

  private announce (): void {
    const names = [...this.changed]
    this.changed.clear()
    try {
      const client = this.host.command()
      for (const name of names) client.publish(this.channel, name).catch(() => {})
    } catch {
      // The adapter is closed: nobody is left to tell.
    }
  }

  /** Waits for this node's operations; the connections stay open (they are the adapter's). */
  async close (): Promise<void> {
    this.stopResync()
    await this.settle()
    await Promise.all([...this.queues.values()])
  }
}

interface TransactionMark { writes: number, values: Map<string, string | null>, rows: Map<string, string> }

/** Where a string key's value (field '') or a hash field's is remembered. */
function slotOf (key: string, field = ''): string {
  return `${key}\u0000${field}`
}

/**
 * One run of an operation (or of a group of appends): reads go to Redis (or to what this run already read or
 * wrote, or, for appends, to what this node remembers) and are remembered with their values; writes are
 * collected and sent in one COMMIT script that checks those values first.
 */
class RedisTransaction implements GroupTransaction<TransactionMark> {
  private readonly keys: string[] = []
  private readonly keyIndex = new Map<string, number>()
  private readonly checks: Argument[] = []
  private checkCount = 0
  /** Every slot checked, so a failed run forgets what it remembered of them. */
  private readonly checked = new Set<string>()
  private readonly writes: Argument[] = []
  /** Values of string keys and hash fields as this run read or wrote them (null: none), by slot. */
  private values = new Map<string, string | null>()
  /** Names of the streams put, by id: their rows (in `values`) are written at commit, as a group's appends put one row many times. */
  private rows = new Map<string, string>()
  /** Whether a value came from what this node remembered rather than from Redis. */
  private recalled = false

  constructor (private readonly client: Redis, private readonly prefix: string, private readonly remembered: RecentMap<string | null>, private readonly recall: boolean) {}

  private key (...parts: string[]): string {
    return this.prefix + parts.join(':')
  }

  /** The 1-based index of `key` in the script's KEYS. */
  private keyArgument (key: string): string {
    let index = this.keyIndex.get(key)
    if (index === undefined) {
      this.keys.push(key)
      index = this.keys.length
      this.keyIndex.set(key, index)
    }
    return String(index)
  }

  private write (command: string, key: string, ...args: Argument[]): void {
    this.writes.push(String(args.length + 2), command, this.keyArgument(key), ...args)
  }

  /** A string key's value (or a hash field's) for this run, checked at commit; null when there is none. */
  private async value (kind: 'k' | 'h', key: string, field = ''): Promise<string | null> {
    const slot = slotOf(key, field)
    const known = this.values.get(slot)
    if (known !== undefined) return known
    let value = this.recall ? this.remembered.get(slot) : undefined
    if (value !== undefined) this.recalled = true
    else value = kind === 'h' ? await this.client.hget(key, field) : await this.client.get(key)
    this.checks.push(kind, this.keyArgument(key), field, value === null ? '' : `=${value}`)
    this.checkCount++
    this.checked.add(slot)
    this.values.set(slot, value)
    return value
  }

  /** Where an operation of a group starts: a refused one goes back to it. */
  mark (): TransactionMark {
    return { writes: this.writes.length, values: new Map(this.values), rows: new Map(this.rows) }
  }

  /** Drops what was written since `mark` (what was read stays checked: the refusal rests on it). */
  rollback (mark: TransactionMark): void {
    this.writes.length = mark.writes
    this.values = mark.values
    this.rows = mark.rows
  }

  /**
   * Sends the writes, if any; a Conflict when something read has changed meanwhile. A run that used remembered
   * values has them checked even with nothing to write: its answer (a refusal, a duplicate) rests on them.
   */
  async commit (): Promise<void> {
    for (const [id, name] of this.rows) {
      this.write('set', this.key('stream', id), this.values.get(slotOf(this.key('stream', id)))!)
      this.write('set', this.key('name', name), id)
      this.write('sadd', this.key('names'), name)
    }
    if (this.writes.length === 0 && !this.recalled) return
    const args: Argument[] = [...this.keys, String(this.checkCount), ...this.checks, ...this.writes]
    let written: unknown
    try {
      written = await this.client.evalsha(COMMIT_SHA, this.keys.length, ...args)
    } catch (err) {
      if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err
      written = await this.client.eval(COMMIT, this.keys.length, ...args)
    }
    if (written !== 1) throw new Conflict()
  }

  /** After a commit (or a run with nothing to commit): this node remembers the values as they now are. */
  remember (): void {
    for (const [slot, value] of this.values) this.remembered.set(slot, value)
  }

  /** After a failed run: what it read or wrote may be out of date. */
  forget (): void {
    for (const slot of [...this.checked, ...this.values.keys()]) this.remembered.delete(slot)
  }

  async stream (name: string): Promise<StoredStream | null> {
    const id = await this.value('k', this.key('name', name))
    return id === null ? null : this.streamById(id)
  }

  async streamById (id: string): Promise<StoredStream | null> {
    const row = await this.value('k', this.key('stream', id))
    // Parsed afresh: the engine changes the rows it is given before it puts them.
    return row === null ? null : JSON.parse(row) as StoredStream
  }

  async put (stream: StoredStream): Promise<void> {
    this.values.set(slotOf(this.key('stream', stream.id)), JSON.stringify(stream))
    this.values.set(slotOf(this.key('name', stream.name)), stream.id)
    this.rows.set(stream.id, stream.name)
  }

  async remove (stream: StoredStream): Promise<void> {
    const ownsName = (await this.stream(stream.name))?.id === stream.id
    this.rows.delete(stream.id)
    this.values.set(slotOf(this.key('stream', stream.id)), null)
    for (const part of ['stream', 'index', 'data', 'producers']) this.write('del', this.key(part, stream.id))
    if (ownsName) {
      this.values.set(slotOf(this.key('name', stream.name)), null)
      this.write('del', this.key('name', stream.name))
      this.write('srem', this.key('names'), stream.name)
    }
  }

  async entries (id: string, from: Position, to: Position, maxBytes: number): Promise<StoredEntry[]> {
    // Index members are `start:end:json:size`, scored by start; the entry holding `from` starts at or before
    // it. Sizes come first, so no more data than `maxBytes` (plus one entry) is ever loaded. Entries below a
    // stream's tail never change while its row (checked at commit) stays.
    const index = this.key('index', id)
    const [first] = await this.client.zrevrangebyscore(index, from, '-inf', 'LIMIT', 0, 1)
    const low = first === undefined ? from : Number(first.split(':')[0])
    const members = await this.client.zrangebyscore(index, low, `(${to}`, 'LIMIT', 0, ENTRY_PAGE)
    const spans = withinBudget(members.map(member => {
      const [start, end, json, size] = member.split(':').map(Number)
      return { start, end, json, size }
    }).filter(span => span.end > from), maxBytes)
    if (spans.length === 0) return []
    const data = await this.client.hmgetBuffer(this.key('data', id), ...spans.map(span => String(span.start)))
    return spans.map(({ start, end, json }, at) => {
      const bytes = data[at]
      // Deleted (or recreated) since this run read its row: run again.
      if (bytes === null || bytes === undefined) throw new Conflict()
      return { start, end, payload: storedPayload(bytes, json === 1, end - start) }
    })
  }

  async addEntry (id: string, entry: StoredEntry): Promise<void> {
    const { payload } = entry
    const data = payloadBytes(payload)
    const json = payload.kind === 'json' ? 1 : 0
    this.write('zadd', this.key('index', id), String(entry.start), `${entry.start}:${entry.end}:${json}:${data.length}`)
    this.write('hset', this.key('data', id), String(entry.start), data)
  }

  async producer (id: string, producerId: string): Promise<ProducerState | null> {
    const value = await this.value('h', this.key('producers', id), producerId)
    if (value === null) return null
    const [epoch, seq] = value.split(':').map(Number)
    return { epoch, seq }
  }

  async setProducer (id: string, producerId: string, state: ProducerState): Promise<void> {
    const value = `${state.epoch}:${state.seq}`
    this.values.set(slotOf(this.key('producers', id), producerId), value)
    this.write('hset', this.key('producers', id), producerId, value)
  }
}

/** Durable streams in the adapter's Redis, over its connections; live readers wake on every node at once. */
export async function createRedisDurableStore (host: RedisHost): Promise<StreamEngine> {
  const backend = new RedisBackend(host)
  try {
    await backend.start()
  } catch (err) {
    throw coded(err) ? err : new BackendUnavailableError(`cannot subscribe the durable streams channel: ${(err as Error).message}`)
  }
  return new StreamEngine(backend)
}
