// RedisAdapter: the engine-compatible Redis layout (one hash per group at `stream:{stream}:{group}`, one
// pub/sub channel `stream::events` carrying the wire JSON), with atomic write+publish in Lua so that the
// publish order is the commit order on every node.
//
// Keys (all under `key_prefix`):
//   stream:{stream}:{group}        hash   item id → JSON text of the item (what iii engines read and write)
//   stream-meta:{stream}:{group}   hash   rev (stored changes so far), ts (last timestamp handed out)
//   stream-order:{stream}:{group}  zset   item id → rev of its first insert (getGroup order)
//   stream-log:{stream}:{group}    stream the group's change log: entry id `<rev>-0`, fields t (timestamp),
//                                         b (event body JSON), i (item id, absent for a group event)
//   stream-epoch                   string the store's epoch (random, made with SET NX)
//   stream-rev-floor               string the highest revision a group without items reached (see PUBLISH_SCRIPT)
// The meta, order, log and epoch keys do not match `stream:*`, so engines scanning that pattern never see them.
// Meta keys outlive their group's items on purpose: rev and ts must keep growing if the group is re-created. A
// group that holds no item when an event is sent to it (`send()`) keeps its meta and log only as long as its log
// is retained (max_age_ms, a TTL): a group created later under that name starts from the revision floor.
// A Redis that lost its data (restart without persistence, FLUSHALL, a meta key lost) loses the epoch key or
// holds a log ahead of its meta: the scripts then make a new epoch, so offsets from before answer "gone".

import { createHash, randomBytes } from 'node:crypto'
import { Redis, type RedisOptions } from 'ioredis'
import {
  checkChangeRange, DEFAULT_CHANGE_LOG_MAX_AGE_MS, DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES,
  type ChangeLogRetention, type ChangePage, type ChangeRecord, type Committed, type DeleteResult, type EventListener,
  type GroupSnapshot, type ItemSnapshot, type ListAllResult, type SetResult, type StreamAdapter, type StreamEvent,
  type StreamEventBody, type UpdateResult
} from './adapter.js'
import { applyUpdateOps, type UpdateOp } from '../update-ops.js'
import {
  BackendUnavailableError, ClosedError, ConflictError, InvalidArgumentError, StorageError
} from '../errors.js'
import type { RedisConfig } from './redis-config.js'

/** How many times `update` re-reads and retries its compare-and-set before giving up with ConflictError. */
export const MAX_UPDATE_ATTEMPTS = 20
const SCAN_COUNT = 1000
const QUIT_TIMEOUT_MS = 1000

// ---------------------------------------------------------------------------------------------------------
// Lua. Values travel as JSON text produced by JSON.stringify in JS and are never decoded here (cjson would
// reorder keys and mangle numbers); envelopes are built by concatenation, in the wire field order.

// Shared tail of every write: bump rev, take ts = max(TIME ms, last ts + 1), store meta, publish. A group
// without meta starts from the revision floor (when the script is given its key).
const STAMP = `
local function stamp (metaKey, bump, floorKey)
  local meta = redis.call('HMGET', metaKey, 'rev', 'ts')
  local rev = tonumber(meta[1])
  local fresh = not rev
  if fresh then rev = floorKey and tonumber(redis.call('GET', floorKey) or '0') or 0 end
  if bump then rev = rev + 1 end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local ts = math.max(now, (tonumber(meta[2]) or 0) + 1)
  local revs = string.format('%.0f', rev)
  local tss = string.format('%.0f', ts)
  if bump then
    redis.call('HSET', metaKey, 'rev', revs, 'ts', tss)
  else
    redis.call('HSET', metaKey, 'ts', tss)
  end
  return revs, tss, fresh
end
`

// The store's epoch, made anew (from the caller's random candidate) when Redis lost it.
const EPOCH = `
local function epoch (epochKey, candidate)
  local e = redis.call('GET', epochKey)
  if e then return e end
  redis.call('SET', epochKey, candidate)
  return candidate
end
`

// Appends the change to the group's log in the write's own script, trimmed by count (MAXLEN ~) and by age
// (entries older than maxAge before this one, looked at from the oldest, a bounded number per write).
// maxChanges 0: the log is off, and what an earlier run logged is dropped so the log never has a gap.
// `fresh`: the group had no meta. A log without its meta means the meta was lost: a new history starts here.
const LOG = EPOCH + `
local function logChange (logKey, epochKey, candidate, revs, tss, id, body, maxChanges, maxAge, fresh)
  epoch(epochKey, candidate)
  if fresh and redis.call('EXISTS', logKey) == 1 then
    redis.call('DEL', logKey)
    redis.call('SET', epochKey, candidate)
  end
  if maxChanges == '0' then
    redis.call('DEL', logKey)
    return
  end
  local entry = {'XADD', logKey, 'MAXLEN', '~', maxChanges, revs .. '-0', 't', tss, 'b', body}
  if id then
    entry[#entry + 1] = 'i'
    entry[#entry + 1] = id
  end
  local added = redis.pcall(unpack(entry))
  if type(added) == 'table' and added.err then
    -- The log is ahead of the revision: the meta key was lost. A new history starts here.
    redis.call('DEL', logKey)
    redis.call('SET', epochKey, candidate)
    redis.call(unpack(entry))
  end
  local cutoff = tonumber(tss) - tonumber(maxAge)
  local oldest = redis.call('XRANGE', logKey, '-', '+', 'COUNT', 1)
  if #oldest == 0 or tonumber(oldest[1][2][2]) >= cutoff then return end
  local first = redis.call('XRANGE', logKey, '-', '+', 'COUNT', 64)
  local keep = nil
  for _, e in ipairs(first) do
    if tonumber(e[2][2]) >= cutoff then
      keep = e[1]
      break
    end
  end
  if not keep then keep = string.format('%.0f', tonumber(string.match(first[#first][1], '^%d+')) + 1) .. '-0' end
  redis.call('XTRIM', logKey, 'MINID', keep)
end
`

const PRELUDE = 'if redis.replicate_commands then pcall(redis.replicate_commands) end\n' + STAMP + LOG

// KEYS: hash, meta, order, log, epoch, revision floor. ARGV: channel, id, new JSON, envelope head, mode
// ('set' | 'cas'), expected present ('1' | '0'), expected JSON, max changes, max age ms, epoch candidate.
// Returns {1, old|nil, rev, ts} or, on a CAS mismatch, {0, current|nil}. The group holds an item now: its meta
// and log lose the TTL a send() to it without items gave them.
const WRITE_SCRIPT = PRELUDE + `
local old = redis.call('HGET', KEYS[1], ARGV[2])
if ARGV[5] == 'cas' then
  if ARGV[6] == '1' then
    if old ~= ARGV[7] then return {0, old} end
  elseif old then
    return {0, old}
  end
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
local revs, tss, fresh = stamp(KEYS[2], true, KEYS[6])
redis.call('PERSIST', KEYS[2])
local kind = 'update'
if not old then
  kind = 'create'
  redis.call('ZADD', KEYS[3], 'NX', revs, ARGV[2])
end
local body = '{"type":"' .. kind .. '","data":' .. ARGV[3] .. '}'
logChange(KEYS[4], KEYS[5], ARGV[10], revs, tss, ARGV[2], body, ARGV[8], ARGV[9], fresh)
redis.call('PERSIST', KEYS[4])
redis.call('PUBLISH', ARGV[1], '{"type":"stream","timestamp":' .. tss .. ARGV[4] .. kind .. '","data":' .. ARGV[3] .. '},"rev":' .. revs .. '}')
return {1, old, revs, tss}
`

// KEYS: hash, meta, order, log, epoch. ARGV: channel, id, envelope head, max changes, max age ms, epoch
// candidate. Returns {0} when absent, else {1, old, rev, ts}.
const DELETE_SCRIPT = PRELUDE + `
local old = redis.call('HGET', KEYS[1], ARGV[2])
if not old then return {0} end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
local revs, tss = stamp(KEYS[2], true)
logChange(KEYS[4], KEYS[5], ARGV[6], revs, tss, ARGV[2], '{"type":"delete","data":' .. old .. '}', ARGV[4], ARGV[5])
redis.call('PUBLISH', ARGV[1], '{"type":"stream","timestamp":' .. tss .. ARGV[3] .. 'delete","data":' .. old .. '},"rev":' .. revs .. '}')
return {1, old, revs, tss}
`

// KEYS: meta, log, epoch, hash, revision floor. ARGV: channel, envelope middle (from ,"streamName" through the
// event object), event body JSON, '=' .. item id ('' for none), max changes, max age ms, epoch candidate.
// Returns {rev, ts}. A published event stores no item but takes the next revision: it has a place of its own in
// the group's log. To a group holding no item, it leaves state that lasts only as long as the log keeps the event:
// meta and log expire after max age, and the floor keeps the revision, so the group never comes back below it.
const PUBLISH_SCRIPT = PRELUDE + `
local revs, tss, fresh = stamp(KEYS[1], true, KEYS[5])
local id = nil
if ARGV[4] ~= '' then id = string.sub(ARGV[4], 2) end
logChange(KEYS[2], KEYS[3], ARGV[7], revs, tss, id, ARGV[3], ARGV[5], ARGV[6], fresh)
if redis.call('EXISTS', KEYS[4]) == 0 then
  if tonumber(revs) > tonumber(redis.call('GET', KEYS[5]) or '0') then redis.call('SET', KEYS[5], revs) end
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
redis.call('PUBLISH', ARGV[1], '{"type":"stream","timestamp":' .. tss .. ARGV[2] .. ',"rev":' .. revs .. '}')
return {revs, tss}
`

// Shared head of the snapshot scripts. `floor` is the highest timestamp this node has delivered for the group.
// When Redis lost the group's meta (restarted without persistence, failed over to a lagging replica, flushed),
// the stored ts is below what clients already saw: raise it past the floor, so the re-sync is not dropped by
// the stock clients (they ignore a sync older than their last event) and later writes keep rising.
const RAISE = `
local function raise (metaKey, stored, floor)
  local ts = tonumber(stored) or 0
  local f = tonumber(floor) or 0
  if ts >= f then return stored or '0' end
  local tss = string.format('%.0f', f + 1)
  redis.call('HSET', metaKey, 'ts', tss)
  return tss
end
`

// KEYS: hash, meta, order, epoch. ARGV: floor, epoch candidate. Returns {rev, ts, epoch, id, value, id, value...}:
// items in first-insert order, then items the order index does not know (written by an engine) sorted by id.
const SNAPSHOT_GROUP_SCRIPT = RAISE + EPOCH + `
local all = redis.call('HGETALL', KEYS[1])
local meta = redis.call('HMGET', KEYS[2], 'rev', 'ts')
local out = {meta[1] or '0', raise(KEYS[2], meta[2], ARGV[1]), epoch(KEYS[4], ARGV[2])}
if #all == 0 then return out end
local values = {}
for i = 1, #all, 2 do values[all[i]] = all[i + 1] end
local order = redis.call('ZRANGE', KEYS[3], 0, -1)
for _, field in ipairs(order) do
  local value = values[field]
  if value then
    out[#out + 1] = field
    out[#out + 1] = value
    values[field] = nil
  end
end
local rest = {}
for field, _ in pairs(values) do rest[#rest + 1] = field end
table.sort(rest)
for _, field in ipairs(rest) do
  out[#out + 1] = field
  out[#out + 1] = values[field]
end
return out
`

// KEYS: hash, meta. ARGV: id. Returns {value|nil, rev, ts}.
const SNAPSHOT_ITEM_SCRIPT = RAISE + `
local value = redis.call('HGET', KEYS[1], ARGV[1])
local meta = redis.call('HMGET', KEYS[2], 'rev', 'ts')
return {value, meta[1] or '0', raise(KEYS[2], meta[2], ARGV[2])}
`

// KEYS: log, meta, epoch. ARGV: after, limit, epoch candidate. Returns {epoch, rev, trimmed, entries}: the entries
// after ARGV[1] (at most ARGV[2] of them), read with the group's revision in one step.
const READ_CHANGES_SCRIPT = EPOCH + `
local rev = tonumber(redis.call('HGET', KEYS[2], 'rev') or '0')
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local trimmed = rev
if #oldest > 0 then
  trimmed = tonumber(string.match(oldest[1][1], '^%d+')) - 1
  if trimmed >= rev then
    -- A log ahead of the revision: the meta key was lost, and with it this history.
    redis.call('DEL', KEYS[1])
    redis.call('SET', KEYS[3], ARGV[3])
    trimmed = rev
    oldest = {}
  end
end
local e = epoch(KEYS[3], ARGV[3])
local entries = {}
if #oldest > 0 then
  entries = redis.call('XRANGE', KEYS[1], string.format('%.0f', tonumber(ARGV[1]) + 1) .. '-0', '+', 'COUNT', ARGV[2])
end
return {e, string.format('%.0f', rev), string.format('%.0f', trimmed), entries}
`

interface Script { lua: string, sha: string, keys: number }

function script (lua: string, keys: number): Script {
  return { lua, sha: createHash('sha1').update(lua).digest('hex'), keys }
}

const SCRIPTS = {
  write: script(WRITE_SCRIPT, 6),
  delete: script(DELETE_SCRIPT, 5),
  publish: script(PUBLISH_SCRIPT, 5),
  snapshotGroup: script(SNAPSHOT_GROUP_SCRIPT, 4),
  snapshotItem: script(SNAPSHOT_ITEM_SCRIPT, 2),
  readChanges: script(READ_CHANGES_SCRIPT, 3)
}

// ---------------------------------------------------------------------------------------------------------

const CHANGE_KINDS = new Set(['create', 'update', 'delete'])

/** Escapes the glob metacharacters of SCAN MATCH. */
export function escapeGlob (text: string): string {
  return text.replace(/[*?[\]\\]/g, '\\$&')
}

function encode (value: unknown, what: string): string {
  let text: string | undefined
  try {
    text = JSON.stringify(value)
  } catch (err) {
    throw new InvalidArgumentError(`${what} is not JSON-serialisable (${(err as Error).message})`)
  }
  if (text === undefined) throw new InvalidArgumentError(`${what} is not JSON-serialisable`)
  return text
}

/** Parses stored JSON for a read; an unparsable value is a storage error, not silently dropped. */
function decode (text: unknown, where: string): unknown {
  if (text === null || text === undefined) return null
  try {
    return JSON.parse(String(text))
  } catch {
    throw new StorageError(`${where} does not hold valid JSON`)
  }
}

/** Parses an old value returned by a write that already committed: never throws, keeps the raw text. */
function decodeLoose (text: unknown): unknown {
  if (text === null || text === undefined) return null
  try {
    return JSON.parse(String(text))
  } catch {
    return String(text)
  }
}

function isReplyError (err: unknown): boolean {
  return err instanceof Error && err.name === 'ReplyError'
}

const UNAVAILABLE_REPLIES = /^(LOADING|BUSY|MASTERDOWN|READONLY|TRYAGAIN|CLUSTERDOWN|NOREPLICAS|MISCONF)\b/

function withCause<E extends Error> (error: E, cause: unknown): E {
  Object.defineProperty(error, 'cause', { value: cause, enumerable: false, writable: true, configurable: true })
  return error
}

function hasCode (err: unknown): err is { code: string } {
  return err !== null && typeof err === 'object' && typeof (err as { code?: unknown }).code === 'string' &&
    (err as { code: string }).code.startsWith('STREAMS_ERR_')
}

/** Parses one channel message into a StreamEvent; null when it is not a well-formed stream envelope. */
export function parseEnvelope (message: string): StreamEvent | null {
  let raw: unknown
  try {
    raw = JSON.parse(message)
  } catch {
    return null
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return null
  const envelope = raw as Record<string, unknown>
  if (envelope.type !== undefined && envelope.type !== 'stream') return null
  const { timestamp, streamName, groupId, event } = envelope
  if (typeof timestamp !== 'number' || !Number.isFinite(timestamp)) return null
  if (typeof streamName !== 'string' || typeof groupId !== 'string') return null
  const id = envelope.id ?? null
  if (id !== null && typeof id !== 'string') return null
  if (event === null || typeof event !== 'object' || Array.isArray(event)) return null
  const body = event as Record<string, unknown>
  let parsed: StreamEventBody
  if (typeof body.type === 'string' && CHANGE_KINDS.has(body.type)) {
    parsed = { type: body.type as 'create' | 'update' | 'delete', data: body.data ?? null }
  } else if (body.type === 'event') {
    const inner = body.event
    if (inner === null || typeof inner !== 'object' || Array.isArray(inner)) return null
    const custom = inner as Record<string, unknown>
    if (typeof custom.type !== 'string') return null
    parsed = { type: 'event', event: { type: custom.type, data: custom.data ?? null } }
  } else {
    return null
  }
  // Messages from publishers that do not stamp revisions (stock iii engines) carry no rev: reported as 0.
  const rev = typeof envelope.rev === 'number' && Number.isSafeInteger(envelope.rev) && envelope.rev >= 0 ? envelope.rev : 0
  return { stream: streamName, group: groupId, id, rev, timestamp, event: parsed }
}

/** The part of an envelope between `"timestamp":<ts>` and the event kind, JSON-encoded in JS. */
function envelopeHead (stream: string, group: string, id: string | null): string {
  return `,"streamName":${JSON.stringify(stream)},"groupId":${JSON.stringify(group)},"id":${id === null ? 'null' : JSON.stringify(id)},"event":`
}

function noop (): void {}

/** A fresh epoch, handed to every script that may have to make one (Redis lost the previous one). */
function epochCandidate (): string {
  return randomBytes(8).toString('hex')
}

/** One XRANGE entry of a group log: `[<rev>-0, [t, ts, b, body, (i, id)]]`. */
function parseLogEntry (entry: unknown): ChangeRecord {
  const [entryId, fields] = entry as [string, string[]]
  let id: string | null = null
  let timestamp = 0
  let body = 'null'
  for (let at = 0; at < fields.length; at += 2) {
    if (fields[at] === 't') timestamp = Number(fields[at + 1])
    else if (fields[at] === 'b') body = fields[at + 1]
    else if (fields[at] === 'i') id = fields[at + 1]
  }
  return { id, rev: Number(entryId.slice(0, entryId.indexOf('-'))), timestamp, event: decode(body, 'a change-log entry') as StreamEventBody }
}

type Status = 'idle' | 'starting' | 'ready' | 'closed'

export class RedisAdapter implements StreamAdapter {
  readonly keyPrefix: string
  readonly channel: string
  private readonly borrowed: boolean
  private client: Redis | null = null
  private subscriber: Redis | null = null
  private status: Status = 'idle'
  private starting: Promise<void> | null = null
  private closing: Promise<void> | null = null
  private readonly listeners = new Set<{ fn: EventListener }>()
  private readonly resyncListeners = new Set<{ fn: () => void }>()
  private readonly locks = new Map<string, Promise<void>>()
  /** True once the subscriber was subscribed and then lost its connection: the next ready is a resync. */
  private subscriberLost = false
  private subscribed = false
  /** Per group (meta key): the highest timestamp this node's feed delivered; see RAISE. */
  private readonly floors = new Map<string, number>()
  readonly retention: ChangeLogRetention
  private readonly logArgs: [string, string]

  /** `config` is checked already: normalizeRedisConfig (redis-config.ts), or createRedisAdapter from the package. */
  constructor (private readonly config: RedisConfig) {
    this.borrowed = this.config.client !== undefined
    this.keyPrefix = this.config.keyPrefix
    this.channel = `${this.config.keyPrefix}stream::events`
    this.retention = this.config.changeLog ?? { maxChanges: DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES, maxAgeMs: DEFAULT_CHANGE_LOG_MAX_AGE_MS }
    this.logArgs = [String(this.retention.maxChanges), String(this.retention.maxAgeMs)]
  }

  // ----- lifecycle ---------------------------------------------------------------------------------------

  async start (): Promise<void> {
    if (this.status === 'closed') throw new ClosedError()
    if (this.status === 'ready') return
    this.starting ??= this.doStart().finally(() => { this.starting = null })
    return this.starting
  }

  private connectionOptions (): RedisOptions {
    return {
      lazyConnect: true,
      connectTimeout: this.config.connectTimeoutMs,
      commandTimeout: this.config.commandTimeoutMs,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      // ioredis arms this timer even for a socket that is already gone (refused); keep it short
      disconnectTimeout: 500,
      retryStrategy: (attempt: number) => Math.min(attempt * 100, 1000)
    }
  }

  private async doStart (): Promise<void> {
    this.status = 'starting'
    const options = this.connectionOptions()
    let client: Redis
    let subscriber: Redis
    try {
      if (this.config.client !== undefined) {
        client = this.config.client
        subscriber = client.duplicate({ ...options, autoResubscribe: false, keyPrefix: undefined })
      } else {
        client = new Redis(this.config.redisUrl, { ...options, connectionName: 'fastify-streams' })
        subscriber = new Redis(this.config.redisUrl, { ...options, autoResubscribe: false, connectionName: 'fastify-streams-sub' })
      }
    } catch (err) {
      this.status = 'idle'
      throw withCause(new BackendUnavailableError(`cannot create the Redis client (${(err as Error).message})`), err)
    }
    let lastError: Error | null = null
    const recordError = (err: Error) => { lastError = err }
    if (!this.borrowed) client.on('error', recordError)
    subscriber.on('error', recordError)
    this.client = client
    this.subscriber = subscriber

    let timer: NodeJS.Timeout | undefined
    try {
      const deadline = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => {
          const reason = lastError?.message ?? 'timed out'
          reject(new BackendUnavailableError(`Redis not reachable within ${this.config.connectTimeoutMs} ms (${reason})`))
        }, this.config.connectTimeoutMs)
        timer.unref()
      })
      await Promise.race([deadline, Promise.all([this.whenReady(client), this.whenReady(subscriber)])])
      await Promise.race([deadline, this.subscribeChannel(subscriber)])
      await Promise.race([deadline, client.set(this.epochKey, epochCandidate(), 'NX')])
    } catch (err) {
      clearTimeout(timer)
      this.client = null
      this.subscriber = null
      if (!this.borrowed) client.disconnect()
      subscriber.disconnect()
      if (this.status === 'starting') this.status = 'idle'
      throw hasCode(err) ? err : withCause(new BackendUnavailableError((err as Error).message), err)
    }
    clearTimeout(timer)
    if (this.status !== 'starting') {
      // closed while starting
      if (!this.borrowed) client.disconnect()
      subscriber.disconnect()
      throw new ClosedError()
    }
    subscriber.on('message', (channel: string, message: string) => this.onMessage(channel, message))
    subscriber.on('close', () => { if (this.subscribed) this.subscriberLost = true })
    subscriber.on('ready', () => { if (this.subscriberLost) this.resubscribe(subscriber) })
    this.status = 'ready'
  }

  /** Resolves when the connection is ready, starting it if it is idle; keeps waiting through retries. */
  private whenReady (redis: Redis): Promise<void> {
    if (redis.status === 'ready') return Promise.resolve()
    return new Promise<void>((resolve) => {
      const onReady = () => { redis.off('ready', onReady); resolve() }
      redis.on('ready', onReady)
      if (redis.status === 'wait') redis.connect().catch(noop)
    })
  }

  private async subscribeChannel (subscriber: Redis): Promise<void> {
    await subscriber.subscribe(this.channel)
    this.subscribed = true
  }

  private resubscribe (subscriber: Redis): void {
    if (this.status !== 'ready' || subscriber !== this.subscriber) return
    this.subscribeChannel(subscriber)
      // Re-syncs read through the command connection: wait for it too, or they fail and nothing retries them.
      .then(() => this.client === null ? undefined : this.whenReady(this.client))
      .then(() => {
        if (this.status !== 'ready' || !this.subscriberLost) return
        this.subscriberLost = false
        for (const entry of [...this.resyncListeners]) {
          try { entry.fn() } catch {}
        }
      }, () => {
        // The connection dropped again before SUBSCRIBE answered; the next ready retries.
      })
  }

  async close (): Promise<void> {
    if (this.closing) return this.closing
    this.status = 'closed'
    this.closing = this.doClose()
    return this.closing
  }

  private async doClose (): Promise<void> {
    const client = this.client
    const subscriber = this.subscriber
    this.client = null
    this.subscriber = null
    this.listeners.clear()
    this.resyncListeners.clear()
    const waits: Array<Promise<void>> = []
    if (subscriber) waits.push(quit(subscriber))
    if (client && !this.borrowed) waits.push(quit(client))
    await Promise.all(waits)
  }

  // ----- feed --------------------------------------------------------------------------------------------

  subscribe (listener: EventListener): () => void {
    if (this.status === 'closed') return noop
    const entry = { fn: listener }
    this.listeners.add(entry)
    return () => { this.listeners.delete(entry) }
  }

  onResync (listener: () => void): () => void {
    if (this.status === 'closed') return noop
    const entry = { fn: listener }
    this.resyncListeners.add(entry)
    return () => { this.resyncListeners.delete(entry) }
  }

  private onMessage (channel: string, message: string): void {
    if (channel !== this.channel || this.status !== 'ready') return
    const event = parseEnvelope(message)
    if (event === null) return
    this.observe(event.stream, event.group, event.timestamp)
    for (const entry of [...this.listeners]) {
      if (!this.listeners.has(entry)) continue
      try { entry.fn(event) } catch {}
    }
  }

  // ----- keys and commands -------------------------------------------------------------------------------

  private groupKey (stream: string, group: string): string {
    return `${this.keyPrefix}stream:${stream}:${group}`
  }

  private metaKey (stream: string, group: string): string {
    return `${this.keyPrefix}stream-meta:${stream}:${group}`
  }

  private floor (stream: string, group: string): string {
    return String(this.floors.get(this.metaKey(stream, group)) ?? 0)
  }

  /** Records a timestamp this node delivered (an event or a snapshot) for the group. */
  private observe (stream: string, group: string, timestamp: number): void {
    const meta = this.metaKey(stream, group)
    if ((this.floors.get(meta) ?? 0) < timestamp) this.floors.set(meta, timestamp)
  }

  private orderKey (stream: string, group: string): string {
    return `${this.keyPrefix}stream-order:${stream}:${group}`
  }

  private logKey (stream: string, group: string): string {
    return `${this.keyPrefix}stream-log:${stream}:${group}`
  }

  private get epochKey (): string {
    return `${this.keyPrefix}stream-epoch`
  }

  private get revFloorKey (): string {
    return `${this.keyPrefix}stream-rev-floor`
  }

  private ready (): Redis {
    if (this.status === 'closed') throw new ClosedError()
    if (this.status !== 'ready' || this.client === null) throw new BackendUnavailableError('the Redis adapter is not started')
    return this.client
  }

  /** Runs one command with a bounded wait (also for a borrowed client with its own settings), mapping errors. */
  private async run<T> (command: (redis: Redis) => Promise<T>): Promise<T> {
    const redis = this.ready()
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new BackendUnavailableError(`Redis did not answer within ${this.config.commandTimeoutMs} ms`)), this.config.commandTimeoutMs)
      timer.unref()
    })
    try {
      return await Promise.race([command(redis), timeout])
    } catch (err) {
      throw this.mapError(err)
    } finally {
      clearTimeout(timer)
    }
  }

  private mapError (err: unknown): Error {
    if (hasCode(err)) return err as unknown as Error
    if (this.status === 'closed') return withCause(new ClosedError(), err)
    const message = err instanceof Error ? err.message : String(err)
    if (isReplyError(err) && !UNAVAILABLE_REPLIES.test(message)) return withCause(new StorageError(message), err)
    return withCause(new BackendUnavailableError(message), err)
  }

  private async evalScript (redis: Redis, s: Script, args: Array<string | number>): Promise<unknown> {
    try {
      return await redis.evalsha(s.sha, s.keys, ...args)
    } catch (err) {
      if (!(isReplyError(err) && /^NOSCRIPT/.test((err as Error).message))) throw err
      return await redis.eval(s.lua, s.keys, ...args)
    }
  }

  private script (s: Script, args: Array<string | number>): Promise<unknown> {
    return this.run((redis) => this.evalScript(redis, s, args))
  }

  // ----- reads -------------------------------------------------------------------------------------------

  async get (stream: string, group: string, id: string): Promise<unknown> {
    const text = await this.run((redis) => redis.hget(this.groupKey(stream, group), id))
    return decode(text, `item "${id}" of ${stream}/${group}`)
  }

  async getGroup (stream: string, group: string): Promise<unknown[]> {
    return (await this.snapshotGroup(stream, group)).items
  }

  async snapshotGroup (stream: string, group: string): Promise<GroupSnapshot> {
    const reply = await this.script(SCRIPTS.snapshotGroup, [
      this.groupKey(stream, group), this.metaKey(stream, group), this.orderKey(stream, group), this.epochKey, this.floor(stream, group), epochCandidate()
    ]) as unknown[]
    const ids: string[] = []
    const items: unknown[] = []
    for (let at = 3; at < reply.length; at += 2) {
      ids.push(String(reply[at]))
      items.push(decode(reply[at + 1], `an item of ${stream}/${group}`))
    }
    this.observe(stream, group, Number(reply[1]))
    return { items, ids, rev: Number(reply[0]), timestamp: Number(reply[1]), epoch: String(reply[2]) }
  }

  async readChanges (stream: string, group: string, after: number, limit: number): Promise<ChangePage> {
    checkChangeRange(after, limit)
    const reply = await this.script(SCRIPTS.readChanges, [this.logKey(stream, group), this.metaKey(stream, group), this.epochKey, after, limit, epochCandidate()]) as unknown[]
    return { epoch: String(reply[0]), rev: Number(reply[1]), trimmed: Number(reply[2]), changes: (reply[3] as unknown[]).map(parseLogEntry) }
  }

  async snapshotItem (stream: string, group: string, id: string): Promise<ItemSnapshot> {
    const reply = await this.script(SCRIPTS.snapshotItem, [this.groupKey(stream, group), this.metaKey(stream, group), id, this.floor(stream, group)]) as unknown[]
    this.observe(stream, group, Number(reply[2]))
    return { value: decode(reply[0], `item "${id}" of ${stream}/${group}`), rev: Number(reply[1]), timestamp: Number(reply[2]) }
  }

  async listGroups (stream: string): Promise<string[]> {
    const head = `${this.keyPrefix}stream:${stream}:`
    const groups = new Set<string>()
    await this.scan(`${escapeGlob(head)}*`, (key) => {
      if (key.startsWith(head) && key.length > head.length) groups.add(key.slice(head.length))
    })
    return [...groups].sort()
  }

  async listAll (): Promise<ListAllResult> {
    const head = `${this.keyPrefix}stream:`
    const streams = new Map<string, Set<string>>()
    await this.scan(`${escapeGlob(head)}*`, (key) => {
      if (!key.startsWith(head)) return
      const rest = key.slice(head.length)
      const colon = rest.indexOf(':')
      if (colon <= 0 || colon === rest.length - 1) return
      const stream = rest.slice(0, colon)
      let groups = streams.get(stream)
      if (!groups) streams.set(stream, groups = new Set())
      groups.add(rest.slice(colon + 1))
    })
    const list = [...streams.keys()].sort().map((id) => ({ id, groups: [...streams.get(id)!].sort() }))
    return { stream: list, count: list.length }
  }

  /** SCAN (never KEYS) over hashes matching `pattern`; empty hashes do not exist in Redis. */
  private async scan (pattern: string, onKey: (key: string) => void): Promise<void> {
    let cursor = '0'
    do {
      const [next, keys] = await this.run((redis) => redis.scan(cursor, 'MATCH', pattern, 'COUNT', SCAN_COUNT, 'TYPE', 'hash'))
      for (const key of keys) onKey(key)
      cursor = next
    } while (cursor !== '0')
  }

  // ----- writes ------------------------------------------------------------------------------------------

  private writeKeys (stream: string, group: string): string[] {
    return [this.groupKey(stream, group), this.metaKey(stream, group), this.orderKey(stream, group), this.logKey(stream, group), this.epochKey]
  }

  /** The write script's keys: those of every write, and the revision floor. */
  private setKeys (stream: string, group: string): string[] {
    return [...this.writeKeys(stream, group), this.revFloorKey]
  }

  async set (stream: string, group: string, id: string, value: unknown): Promise<Committed<SetResult>> {
    const text = encode(value, 'the item value')
    this.ready()
    const reply = await this.script(SCRIPTS.write, [
      ...this.setKeys(stream, group), this.channel, id, text, envelopeHead(stream, group, id) + '{"type":"', 'set', '0', '', ...this.logArgs, epochCandidate()
    ]) as unknown[]
    const newValue = JSON.parse(text)
    return { old_value: decodeLoose(reply[1]), new_value: newValue, event: this.committed(stream, group, id, reply, { type: reply[1] == null ? 'create' : 'update', data: newValue }) }
  }

  async delete (stream: string, group: string, id: string): Promise<Committed<DeleteResult>> {
    const reply = await this.script(SCRIPTS.delete, [
      ...this.writeKeys(stream, group), this.channel, id, envelopeHead(stream, group, id) + '{"type":"', ...this.logArgs, epochCandidate()
    ]) as unknown[]
    if (Number(reply[0]) !== 1) return { old_value: null, event: null }
    const old = decodeLoose(reply[1])
    return { old_value: old, event: this.committed(stream, group, id, reply, { type: 'delete', data: old }) }
  }

  /** The event a write script committed, from its reply `{1, old, rev, ts}`. */
  private committed (stream: string, group: string, id: string, reply: unknown[], event: StreamEventBody): StreamEvent {
    return { stream, group, id, rev: Number(reply[2]), timestamp: Number(reply[3]), event }
  }

  async update (stream: string, group: string, id: string, ops: UpdateOp[], prepare?: (value: unknown) => unknown): Promise<Committed<UpdateResult>> {
    if (!Array.isArray(ops)) throw new InvalidArgumentError('ops must be an array')
    this.ready()
    // One compare-and-set loop per item at a time on this node: contention is then only between nodes.
    return this.withLock(JSON.stringify([stream, group, id]), async () => {
      const head = envelopeHead(stream, group, id) + '{"type":"'
      let current = await this.run((redis) => redis.hget(this.groupKey(stream, group), id)) as string | null
      for (let attempt = 1; attempt <= MAX_UPDATE_ATTEMPTS; attempt++) {
        const old = decode(current, `item "${id}" of ${stream}/${group}`)
        const { value, errors } = applyUpdateOps(old, ops, current !== null)
        const next = prepare ? prepare(value) : value
        const text = encode(next, 'the updated value')
        const reply = await this.script(SCRIPTS.write, [
          ...this.setKeys(stream, group), this.channel, id, text, head, 'cas', current === null ? '0' : '1', current ?? '', ...this.logArgs, epochCandidate()
        ]) as unknown[]
        if (Number(reply[0]) === 1) {
          const newValue = JSON.parse(text)
          const event = this.committed(stream, group, id, reply, { type: current === null ? 'create' : 'update', data: newValue })
          return errors.length > 0 ? { old_value: old, new_value: newValue, errors, event } : { old_value: old, new_value: newValue, event }
        }
        current = reply[1] === null || reply[1] === undefined ? null : String(reply[1])
        if (attempt > 2) await sleep(Math.random() * Math.min(2 ** attempt, 50))
      }
      throw new ConflictError(`item "${id}" of ${stream}/${group} changed ${MAX_UPDATE_ATTEMPTS} times while being updated`)
    })
  }

  async publish (stream: string, group: string, id: string | null, body: StreamEventBody): Promise<StreamEvent> {
    const event = body.type === 'event' ? body.event : null
    if (body.type === 'event' ? (event === null || typeof event !== 'object' || typeof event.type !== 'string') : !CHANGE_KINDS.has(body.type)) {
      throw new InvalidArgumentError('the event body must be { type: "event", event: { type, data } } or a change')
    }
    const text = encode(body.type === 'event' ? { type: 'event', event: { type: event!.type, data: event!.data ?? null } } : { type: body.type, data: body.data ?? null }, 'the event data')
    const reply = await this.script(SCRIPTS.publish, [
      this.metaKey(stream, group), this.logKey(stream, group), this.epochKey, this.groupKey(stream, group), this.revFloorKey,
      this.channel, envelopeHead(stream, group, id) + text, text, id === null ? '' : `=${id}`, ...this.logArgs, epochCandidate()
    ]) as unknown[]
    return { stream, group, id, rev: Number(reply[0]), timestamp: Number(reply[1]), event: JSON.parse(text) }
  }

  private async withLock<T> (key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(key) ?? Promise.resolve()
    let release!: () => void
    const mine = new Promise<void>((resolve) => { release = resolve })
    const tail = previous.then(() => mine)
    this.locks.set(key, tail)
    await previous
    try {
      return await fn()
    } finally {
      release()
      if (this.locks.get(key) === tail) this.locks.delete(key)
    }
  }
}

function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => { setTimeout(resolve, ms).unref() })
}

/** QUIT, or a hard disconnect when the server does not answer in time (or is gone). */
async function quit (redis: Redis): Promise<void> {
  redis.removeAllListeners('message')
  if (redis.status === 'end') return
  if (redis.status !== 'ready') {
    redis.disconnect()
    return
  }
  let timer: NodeJS.Timeout | undefined
  try {
    await Promise.race([
      redis.quit().then(noop, noop),
      new Promise<void>((resolve) => { timer = setTimeout(resolve, QUIT_TIMEOUT_MS); timer.unref() })
    ])
  } finally {
    clearTimeout(timer)
    if ((redis.status as string) !== 'end') redis.disconnect()
  }
}
