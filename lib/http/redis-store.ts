// Durable streams in the RedisAdapter's Redis (keys `${key_prefix}ds:*`), over the adapter's own connections:
// its command connection for the data, its subscriber connection for the change channel. Every node serves
// every stream. No lock: each operation is an optimistic transaction on the keys of the streams it touches
// (it reads them, then one Lua script writes only if none of what it read changed, else the operation runs
// again), so operations on different streams run at once and those on one stream apply one after another.
import { createHash } from 'node:crypto'
import type { Redis } from 'ioredis'
import { BackendUnavailableError } from '../errors.js'
import { SerialBackend, StreamEngine, payloadBytes, storedPayload, withinBudget, type StoredEntry, type StoredStream, type StreamBackend, type StreamTransaction } from './stream-engine.js'
import type { Position, ProducerState } from './store.js'

/** Index members a read looks at per call (a read asks again for more). */
const ENTRY_PAGE = 64
/** Runs of one operation that lost to concurrent writers before it gives up (503). */
const MAX_ATTEMPTS = 50
/** The longest pause between two runs of an operation that lost (a random part of it, growing with the runs). */
const MAX_BACKOFF_MS = 20

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
  private inOrder<T> (name: string, task: () => Promise<T>): Promise<T> {
    const result = (this.queues.get(name) ?? Promise.resolve()).then(task)
    const tail = result.then(() => {}, () => {})
    this.queues.set(name, tail)
    tail.then(() => { if (this.queues.get(name) === tail) this.queues.delete(name) }, () => {})
    return result
  }

  run<T> (name: string, work: (tx: StreamTransaction) => Promise<T>): Promise<T> {
    return this.inOrder(name, async () => {
      for (let attempt = 1; ; attempt++) {
        const tx = new RedisTransaction(this.host.command(), this.prefix)
        try {
          const value = await work(tx)
          await tx.commit()
          return value
        } catch (err) {
          if (coded(err)) throw err
          if (!(err instanceof Conflict)) throw new BackendUnavailableError(`durable stream operation failed: ${(err as Error).message}`)
          if (attempt === MAX_ATTEMPTS) throw new BackendUnavailableError(`a durable stream operation lost to concurrent writers ${MAX_ATTEMPTS} times`)
          await new Promise(resolve => setTimeout(resolve, Math.random() * Math.min(attempt, MAX_BACKOFF_MS)))
        }
      }
    })
  }

  async names (): Promise<string[]> {
    return this.host.command().smembers(`${this.prefix}names`)
  }

  publish (name: string): void {
    try {
      this.host.command().publish(this.channel, name).catch(() => {})
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

/**
 * One run of an operation: reads go to Redis (or to what this run already read or wrote) and are remembered
 * with their values; writes are collected and sent in one COMMIT script that checks those values first.
 */
class RedisTransaction implements StreamTransaction {
  private readonly keys: string[] = []
  private readonly keyIndex = new Map<string, number>()
  private readonly checks: Argument[] = []
  private checkCount = 0
  private readonly writes: Argument[] = []
  /** Stream rows by id and stream ids by name, as read or written by this run (null: none). */
  private readonly rows = new Map<string, StoredStream | null>()
  private readonly ids = new Map<string, string | null>()
  private readonly producers = new Map<string, ProducerState | null>()

  constructor (private readonly client: Redis, private readonly prefix: string) {}

  private key (...parts: string[]): string {
    return this.prefix + parts.join(':')
  }

  /** The 1-based index of `key` in the script's KEYS. */
  private slot (key: string): string {
    let index = this.keyIndex.get(key)
    if (index === undefined) {
      this.keys.push(key)
      index = this.keys.length
      this.keyIndex.set(key, index)
    }
    return String(index)
  }

  private check (kind: 'k' | 'h', key: string, field: string, value: string | null): void {
    this.checks.push(kind, this.slot(key), field, value === null ? '' : `=${value}`)
    this.checkCount++
  }

  private write (command: string, key: string, ...args: Argument[]): void {
    this.writes.push(String(args.length + 2), command, this.slot(key), ...args)
  }

  /** Sends the writes, if any; a Conflict when something read has changed meanwhile. */
  async commit (): Promise<void> {
    if (this.writes.length === 0) return
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

  async stream (name: string): Promise<StoredStream | null> {
    let id = this.ids.get(name)
    if (id === undefined) {
      const key = this.key('name', name)
      id = await this.client.get(key)
      this.check('k', key, '', id)
      this.ids.set(name, id)
    }
    return id === null ? null : this.streamById(id)
  }

  async streamById (id: string): Promise<StoredStream | null> {
    if (!this.rows.has(id)) {
      const key = this.key('stream', id)
      const row = await this.client.get(key)
      this.check('k', key, '', row)
      this.rows.set(id, row === null ? null : JSON.parse(row) as StoredStream)
    }
    const row = this.rows.get(id) ?? null
    // A copy: the engine changes the rows it is given before it puts them.
    return row === null ? null : { ...row }
  }

  async put (stream: StoredStream): Promise<void> {
    this.rows.set(stream.id, { ...stream })
    this.ids.set(stream.name, stream.id)
    this.write('set', this.key('stream', stream.id), JSON.stringify(stream))
    this.write('set', this.key('name', stream.name), stream.id)
    this.write('sadd', this.key('names'), stream.name)
  }

  async remove (stream: StoredStream): Promise<void> {
    const ownsName = (await this.stream(stream.name))?.id === stream.id
    this.rows.set(stream.id, null)
    for (const part of ['stream', 'index', 'data', 'producers']) this.write('del', this.key(part, stream.id))
    if (ownsName) {
      this.ids.set(stream.name, null)
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
      return { start, end, payload: storedPayload(bytes, json === 1) }
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
    const field = `${id}\u0000${producerId}`
    if (!this.producers.has(field)) {
      const key = this.key('producers', id)
      const value = await this.client.hget(key, producerId)
      this.check('h', key, producerId, value)
      const [epoch, seq] = (value ?? '').split(':').map(Number)
      this.producers.set(field, value === null ? null : { epoch, seq })
    }
    return this.producers.get(field) ?? null
  }

  async setProducer (id: string, producerId: string, state: ProducerState): Promise<void> {
    this.producers.set(`${id}\u0000${producerId}`, state)
    this.write('hset', this.key('producers', id), producerId, `${state.epoch}:${state.seq}`)
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
