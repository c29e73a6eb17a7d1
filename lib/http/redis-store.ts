// Durable streams in the RedisAdapter's Redis (keys `${key_prefix}ds:*`, their own connections). Every node
// serves every stream: operations take one Redis lock, read under it and write in one MULTI/EXEC at the end;
// changes go out on a pub/sub channel so live readers on every node wake at once.
import { randomUUID } from 'node:crypto'
import { Redis } from 'ioredis'
import { BackendUnavailableError } from '../errors.js'
import type { RedisConfig } from '../adapters/redis-config.js'
import { SerialBackend, StreamEngine, withinBudget, type StoredEntry, type StoredStream, type StreamBackend, type StreamTransaction } from './stream-engine.js'
import type { Position, ProducerState } from './store.js'

/** How long a node may hold the operation lock before another may take it (a node that died holding it). */
const LOCK_TTL_MS = 10_000
const LOCK_RETRY_MS = 2
const ENTRY_PAGE = 64
const RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"

type Write = (multi: ReturnType<Redis['multi']>) => void

class RedisBackend extends SerialBackend implements StreamBackend {
  private readonly channel: string

  constructor (private readonly client: Redis, private readonly subscriber: Redis, private readonly prefix: string, private readonly lockWaitMs: number) {
    super()
    this.channel = `${prefix}changes`
    subscriber.on('message', (channel: string, name: string) => {
      if (channel === this.channel) this.emit(name)
    })
  }

  async start (): Promise<void> {
    await this.subscriber.subscribe(this.channel)
  }

  private key (...parts: string[]): string {
    return this.prefix + parts.join(':')
  }

  private async lock (): Promise<string> {
    const token = randomUUID()
    const deadline = Date.now() + this.lockWaitMs
    while (await this.client.set(this.key('lock'), token, 'PX', LOCK_TTL_MS, 'NX') === null) {
      if (Date.now() > deadline) throw new BackendUnavailableError('the durable streams lock stayed taken')
      await new Promise(resolve => setTimeout(resolve, LOCK_RETRY_MS))
    }
    return token
  }

  run<T> (work: (tx: StreamTransaction) => Promise<T>): Promise<T> {
    return this.serial(async () => {
      const token = await this.lock()
      try {
        const tx = new RedisTransaction(this.client, (...parts) => this.key(...parts))
        const value = await work(tx)
        await tx.commit()
        return value
      } finally {
        await this.client.eval(RELEASE, 1, this.key('lock'), token)
      }
    })
  }

  async names (): Promise<string[]> {
    return this.client.smembers(this.key('names'))
  }

  publish (name: string): void {
    this.client.publish(this.channel, name).catch(() => {})
  }

  async close (): Promise<void> {
    await this.settle()
    this.subscriber.disconnect()
    await this.client.quit().catch(() => this.client.disconnect())
  }
}

/** Reads go to Redis (through the rows this operation already wrote); writes wait for one MULTI/EXEC. */
class RedisTransaction implements StreamTransaction {
  private readonly rows = new Map<string, StoredStream | null>()
  private readonly names = new Map<string, string | null>()
  private readonly writes: Write[] = []

  constructor (private readonly client: Redis, private readonly key: (...parts: string[]) => string) {}

  async commit (): Promise<void> {
    if (this.writes.length === 0) return
    const multi = this.client.multi()
    for (const write of this.writes) write(multi)
    const results = await multi.exec()
    const failed = results?.find(([err]) => err !== null)
    if (results === null || failed !== undefined) throw new BackendUnavailableError(`durable stream write failed: ${failed?.[0]?.message ?? 'aborted'}`)
  }

  async stream (name: string): Promise<StoredStream | null> {
    const id = this.names.has(name) ? this.names.get(name) : await this.client.get(this.key('name', name))
    return id === null || id === undefined ? null : this.streamById(id)
  }

  async streamById (id: string): Promise<StoredStream | null> {
    if (this.rows.has(id)) return this.rows.get(id) ?? null
    const row = await this.client.get(this.key('stream', id))
    return row === null ? null : JSON.parse(row) as StoredStream
  }

  async put (stream: StoredStream): Promise<void> {
    const row = JSON.stringify(stream)
    this.rows.set(stream.id, JSON.parse(row) as StoredStream)
    this.names.set(stream.name, stream.id)
    this.writes.push((multi) => {
      multi.set(this.key('stream', stream.id), row)
      multi.set(this.key('name', stream.name), stream.id)
      multi.sadd(this.key('names'), stream.name)
    })
  }

  async remove (stream: StoredStream): Promise<void> {
    this.rows.set(stream.id, null)
    const current = await this.stream(stream.name)
    const ownsName = current?.id === stream.id
    if (ownsName) this.names.set(stream.name, null)
    this.writes.push((multi) => {
      multi.del(this.key('stream', stream.id), this.key('index', stream.id), this.key('data', stream.id), this.key('producers', stream.id))
      if (ownsName) {
        multi.del(this.key('name', stream.name))
        multi.srem(this.key('names'), stream.name)
      }
    })
  }

  async entries (id: string, from: Position, to: Position, maxBytes: number): Promise<StoredEntry[]> {
    // Index members are `start:end:json:size`, scored by start; the entry holding `from` starts at or before
    // it. Sizes come first, so no more data than `maxBytes` (plus one entry) is ever loaded.
    const [first] = await this.client.zrevrangebyscore(this.key('index', id), from, '-inf', 'LIMIT', 0, 1)
    const low = first === undefined ? from : Number(first.split(':')[0])
    const members = await this.client.zrangebyscore(this.key('index', id), low, `(${to}`, 'LIMIT', 0, ENTRY_PAGE)
    const spans = withinBudget(members.map(member => {
      const [start, end, json, size] = member.split(':').map(Number)
      return { start, end, json, size }
    }).filter(span => span.end > from), maxBytes)
    if (spans.length === 0) return []
    const data = await this.client.hmgetBuffer(this.key('data', id), ...spans.map(span => String(span.start)))
    return spans.map(({ start, end, json }, index) => {
      const bytes = data[index] ?? Buffer.alloc(0)
      return { start, end, payload: json === 1 ? { kind: 'json', messages: bytes.toString('utf8').split('\n') } : { kind: 'bytes', bytes } }
    })
  }

  async addEntry (id: string, entry: StoredEntry): Promise<void> {
    const { payload } = entry
    // JSON messages are canonical JSON texts, which never hold a raw newline: one per line.
    const data = payload.kind === 'bytes' ? payload.bytes : Buffer.from(payload.messages.join('\n'))
    const json = payload.kind === 'json' ? 1 : 0
    this.writes.push((multi) => {
      multi.zadd(this.key('index', id), entry.start, `${entry.start}:${entry.end}:${json}:${data.length}`)
      multi.hset(this.key('data', id), String(entry.start), data)
    })
  }

  async producer (id: string, producerId: string): Promise<ProducerState | null> {
    const value = await this.client.hget(this.key('producers', id), producerId)
    if (value === null) return null
    const [epoch, seq] = value.split(':').map(Number)
    return { epoch, seq }
  }

  async setProducer (id: string, producerId: string, state: ProducerState): Promise<void> {
    this.writes.push((multi) => { multi.hset(this.key('producers', id), producerId, `${state.epoch}:${state.seq}`) })
  }
}

/** Connects to the adapter's Redis (or duplicates its client) for durable streams. */
export async function createRedisDurableStore (config: RedisConfig): Promise<StreamEngine> {
  const options = {
    connectTimeout: config.connectTimeoutMs,
    commandTimeout: config.commandTimeoutMs,
    maxRetriesPerRequest: 1,
    lazyConnect: true
  }
  const given = config.client as Redis | undefined
  const client = given?.duplicate(options) ?? new Redis(config.redisUrl, { ...options, connectionName: 'fastify-streams-ds' })
  const subscriber = client.duplicate({ ...options, connectionName: 'fastify-streams-ds-sub' })
  try {
    await client.connect()
    await subscriber.connect()
    const backend = new RedisBackend(client, subscriber, `${config.keyPrefix}ds:`, config.commandTimeoutMs * 5)
    await backend.start()
    return new StreamEngine(backend)
  } catch (err) {
    client.disconnect()
    subscriber.disconnect()
    throw new BackendUnavailableError(`Redis not reachable for durable streams: ${(err as Error).message}`)
  }
}
