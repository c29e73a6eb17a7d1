// RedisAdapter: the engine-compatible Redis layout (one hash per group at `stream:{stream}:{group}`, one
// pub/sub channel `stream::events` carrying the wire JSON), with atomic write+publish in Lua so that the
// publish order is the commit order on every node.
//
// Keys (all under `key_prefix`):
//   stream:{stream}:{group}        hash   item id → JSON text of the item (what iii engines read and write)
//   stream-meta:{stream}:{group}   hash   rev (stored changes so far), ts (last timestamp handed out)
//   stream-order:{stream}:{group}  zset   item id → rev of its first insert (getGroup order)
//   stream-log:{stream}:{group}    stream the group's change log: entry id `<rev>-0`, fields t (timestamp),
//                                         b (event body JSON), i (item id, absent for a group event), p ('1' on
//                                         an event `publish` logged: it stored nothing in the group's hash)
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
import { MAX_SERVABLE_VALUE_DEPTH } from '../values.js'
import {
  BackendUnavailableError, ClosedError, ConflictError, InvalidArgumentError, StorageError
} from '../errors.js'
import type { RedisConfig } from './redis-config.js'
import type { DurableStreamStore } from '../http/store.js'

/** How many times `update` re-reads and retries its compare-and-set before giving up with ConflictError. */
export const MAX_UPDATE_ATTEMPTS = 20
const SCAN_COUNT = 1000
/**
 * How many times a paged group snapshot starts again when the change log no longer holds what it must replay
 * (trimmed by a write burst while the pages were read, or off) before it fails with BackendUnavailableError.
 */
export const MAX_SNAPSHOT_ATTEMPTS = 5
/** The deepest stored value a read serves; deeper ones are skipped (see MAX_SERVABLE_VALUE_DEPTH). */
export const MAX_STORED_VALUE_DEPTH = MAX_SERVABLE_VALUE_DEPTH
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
local function logChange (logKey, epochKey, candidate, revs, tss, id, body, maxChanges, maxAge, fresh, published)
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
  if published then
    entry[#entry + 1] = 'p'
    entry[#entry + 1] = '1'
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
logChange(KEYS[2], KEYS[3], ARGV[7], revs, tss, id, ARGV[3], ARGV[5], ARGV[6], fresh, true)
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

// KEYS: hash, meta, order, epoch. ARGV: floor, epoch candidate, most items read whole.
// Returns {rev, ts, epoch, whole, id, value, id, value...}. A group of at most ARGV[3] items is read whole (whole
// '1'): items in first-insert order, then items the order index does not know (written by an engine) sorted by
// id. A bigger one (whole '0') only gets its rev and epoch here: it is read in pages (readPaged), never by one
// script, which would block every other Redis client while it runs.
const SNAPSHOT_GROUP_SCRIPT = RAISE + EPOCH + `
local meta = redis.call('HMGET', KEYS[2], 'rev', 'ts')
local out = {meta[1] or '0', raise(KEYS[2], meta[2], ARGV[1]), epoch(KEYS[4], ARGV[2]), '1'}
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[3]) then
  out[4] = '0'
  return out
end
local all = redis.call('HGETALL', KEYS[1])
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

// KEYS: meta, epoch. ARGV: floor, epoch candidate. Returns {rev, ts, epoch}: the revision a paged snapshot is at.
const SNAPSHOT_MARK_SCRIPT = RAISE + EPOCH + `
local meta = redis.call('HMGET', KEYS[1], 'rev', 'ts')
return {meta[1] or '0', raise(KEYS[1], meta[2], ARGV[1]), epoch(KEYS[2], ARGV[2])}
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
  snapshotMark: script(SNAPSHOT_MARK_SCRIPT, 2),
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

/** Marks a stored value no read can serve (see readStored). */
const UNREADABLE = Symbol('unreadable')

/** True when `text` (JSON) nests arrays and objects deeper than `limit`; a scan of the text, nothing is parsed. */
export function nestsDeeper (text: string, limit: number): boolean {
  // Each level takes two characters at least: a shorter text cannot be deeper.
  if (text.length <= 2 * limit) return false
  let depth = 0
  let inString = false
  for (let at = 0; at < text.length; at++) {
    const char = text.charCodeAt(at)
    if (inString) {
      if (char === 0x5c) at++ // backslash: skip the escaped character
      else if (char === 0x22) inString = false
    } else if (char === 0x22) {
      inString = true
    } else if (char === 0x5b || char === 0x7b) {
      if (++depth > limit) return true
    } else if (char === 0x5d || char === 0x7d) {
      depth--
    }
  }
  return false
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

interface LogEntry { rev: number, id: string | null, timestamp: number, body: string, published: boolean }

/** One XRANGE entry of a group log, `[<rev>-0, [t, ts, b, body, (i, id), (p, 1)]]`, its body still JSON text. */
function readLogEntry (entry: unknown): LogEntry {
  const [entryId, fields] = entry as [string, string[]]
  const read: LogEntry = { rev: Number(entryId.slice(0, entryId.indexOf('-'))), id: null, timestamp: 0, body: 'null', published: false }
  for (let at = 0; at < fields.length; at += 2) {
    if (fields[at] === 't') read.timestamp = Number(fields[at + 1])
    else if (fields[at] === 'b') read.body = fields[at + 1]
    else if (fields[at] === 'i') read.id = fields[at + 1]
    else if (fields[at] === 'p') read.published = true
  }
  return read
}

function parseLogEntry (entry: unknown): ChangeRecord {
  const { id, rev, timestamp, body } = readLogEntry(entry)
  return { id, rev, timestamp, event: decode(body, 'a change-log entry') as StreamEventBody }
}

// The write scripts log a change as `{"type":"<kind>","data":` + the stored JSON text + `}`.
const STORED_BODY_HEADS = new Map(['create', 'update', 'delete'].map((kind) => [`{"type":"${kind}","data":`, kind]))
const STORED_BODY_HEAD_LENGTH = '{"type":"create","data":'.length

/**
 * What a logged change did to the group's hash: a create or update stored `text`, a delete removed the item;
 * null for a custom event or a change `publish` logged (it stored nothing).
 */
function storedChange (entry: LogEntry): { kind: string, text: string } | null {
  if (entry.published || entry.id === null) return null
  const kind = STORED_BODY_HEADS.get(entry.body.slice(0, STORED_BODY_HEAD_LENGTH))
  return kind === undefined ? null : { kind, text: entry.body.slice(STORED_BODY_HEAD_LENGTH, -1) }
}

/**
 * A group's stored texts at one revision, as read from Redis. Shared by the snapshots that coalesced on one paged
 * read; each caller decodes its own items from it, so no two callers share (and may mutate) one object.
 */
interface GroupRead {
  ids: string[]
  texts: string[]
  /** The last-change timestamp of items the read learned it for (changed while it was paged), else holes. */
  timestamps: number[] | null
  rev: number
  timestamp: number
  epoch: string
}

/** A paged group read under way; `joinable` until it reads the revision it ends at. */
interface PagedRead { promise: Promise<GroupRead>, joinable: boolean }

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
  /** Per group (hash key): the paged snapshot read under way, which a concurrent snapshot of the group may join. */
  private readonly pagedReads = new Map<string, PagedRead>()
  /** Stored values reads skipped (not JSON, or nested deeper than MAX_STORED_VALUE_DEPTH); warned about once. */
  skippedItems = 0
  /** Channels other than the feed's subscribed on the subscriber connection, with where their messages go. */
  private readonly routes = new Map<string, (message: string) => void>()
  private durable: Promise<DurableStreamStore> | null = null

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
    await subscriber.subscribe(this.channel, ...this.routes.keys())
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
    // Its operations end on the connections before they close.
    await this.durable?.then(store => store.close(), noop)
    const client = this.client
    const subscriber = this.subscriber
    this.client = null
    this.subscriber = null
    this.listeners.clear()
    this.resyncListeners.clear()
    this.routes.clear()
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

  /**
   * Subscribes `channel` on this adapter's subscriber connection (and again whenever it reconnects) and hands
   * its messages to `onMessage`: other users of this Redis (durable streams) open no connection of their own.
   */
  async listen (channel: string, onMessage: (message: string) => void): Promise<void> {
    this.ready()
    this.routes.set(channel, onMessage)
    await this.subscriber!.subscribe(channel)
  }

  /** Durable streams in this Redis (keys `${key_prefix}ds:*`), over this adapter's two connections. */
  async durableStreamStore (): Promise<DurableStreamStore> {
    this.ready()
    this.durable ??= import('../http/redis-store.js').then(store => store.createRedisDurableStore({
      keyPrefix: this.keyPrefix,
      command: () => this.ready(),
      listen: (channel, onMessage) => this.listen(channel, onMessage),
      onResync: (listener) => this.onResync(listener)
    })).catch((err: unknown) => {
      this.durable = null
      throw err
    })
    return await this.durable
  }

  private onMessage (channel: string, message: string): void {
    const routed = this.routes.get(channel)
    if (routed !== undefined) {
      routed(message)
      return
    }
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

  /**
   * A stored value as a read serves it: parsed, or UNREADABLE (counted, warned about once) when it is not JSON or
   * nests deeper than MAX_STORED_VALUE_DEPTH. Reads never throw on stored data: what cannot be served is absent.
   */
  private readStored (text: string, where: string): unknown {
    if (!nestsDeeper(text, MAX_STORED_VALUE_DEPTH)) {
      try {
        return JSON.parse(text)
      } catch {}
    }
    if (this.skippedItems++ === 0) {
      process.emitWarning(`${where} holds a value that is not JSON or nests deeper than ${MAX_STORED_VALUE_DEPTH} levels: reads skip it (and every such value)`, { code: 'STREAMS_SKIPPED_ITEMS' })
    }
    return UNREADABLE
  }

  async get (stream: string, group: string, id: string): Promise<unknown> {
    const text = await this.run((redis) => redis.hget(this.groupKey(stream, group), id))
    if (text === null) return null
    const value = this.readStored(text, `item "${id}" of ${stream}/${group}`)
    return value === UNREADABLE ? null : value
  }

  async getGroup (stream: string, group: string): Promise<unknown[]> {
    return (await this.snapshotGroup(stream, group)).items
  }

  /**
   * The group at one revision. A small group is read by one script; a bigger one (more than `snapshot_page_size`
   * items) in pages, made consistent through the change log (readPaged). Values no read can serve are skipped.
   */
  async snapshotGroup (stream: string, group: string): Promise<GroupSnapshot & { timestamps?: number[] }> {
    const read = await this.readGroup(stream, group)
    const ids: string[] = []
    const items: unknown[] = []
    const timestamps: number[] = []
    for (let at = 0; at < read.ids.length; at++) {
      // A page at a time: decoding a big group in one go would hold this process's event loop (other requests,
      // the replies of other reads) for as long as Redis was kept from being held.
      if (at > 0 && at % this.config.snapshotPageSize === 0) await new Promise((resolve) => setImmediate(resolve))
      const value = this.readStored(read.texts[at], `item "${read.ids[at]}" of ${stream}/${group}`)
      if (value === UNREADABLE) continue
      const timestamp = read.timestamps?.[at]
      if (timestamp !== undefined) timestamps[items.length] = timestamp
      ids.push(read.ids[at])
      items.push(value)
    }
    const snapshot = { items, ids, rev: read.rev, timestamp: read.timestamp, epoch: read.epoch }
    return read.timestamps === null ? snapshot : { ...snapshot, timestamps }
  }

  /** The group's texts at one revision: whole by one script when small, else paged (joining a paged read under way). */
  private async readGroup (stream: string, group: string): Promise<GroupRead> {
    const key = this.groupKey(stream, group)
    const running = this.pagedReads.get(key)
    if (running?.joinable === true) return await running.promise
    const reply = await this.script(SCRIPTS.snapshotGroup, [
      key, this.metaKey(stream, group), this.orderKey(stream, group), this.epochKey, this.floor(stream, group), epochCandidate(), this.config.snapshotPageSize
    ]) as unknown[]
    const rev = Number(reply[0])
    const epoch = String(reply[2])
    if (String(reply[3]) === '1') {
      const ids: string[] = []
      const texts: string[] = []
      for (let at = 4; at < reply.length; at += 2) {
        ids.push(String(reply[at]))
        texts.push(String(reply[at + 1]))
      }
      this.observe(stream, group, Number(reply[1]))
      return { ids, texts, timestamps: null, rev, timestamp: Number(reply[1]), epoch }
    }
    // Another snapshot of the group may have started paging while this one asked: it ends after now, so join it.
    const started = this.pagedReads.get(key)
    if (started?.joinable === true) return await started.promise
    const paged: PagedRead = { promise: Promise.resolve(null as unknown as GroupRead), joinable: true }
    paged.promise = this.readPaged(stream, group, paged, rev, epoch).finally(() => {
      if (this.pagedReads.get(key) === paged) this.pagedReads.delete(key)
    })
    this.pagedReads.set(key, paged)
    return await paged.promise
  }

  /**
   * Reads a big group in pages without blocking Redis, at one revision: with the revision R0 read before the
   * pages (`rev`), it pages the hash (HSCAN) and the order index, reads the revision R1 after them, and replays
   * the change log's entries (R0, R1] over what the pages saw. An item no write touched in between was seen as
   * it is at R1; every other one is as its last logged change left it. The replayed entries also give those
   * items' timestamps. When the log no longer holds (R0, R1] (trimmed by a burst, or off), it starts again from
   * R1, at most MAX_SNAPSHOT_ATTEMPTS times. Items an engine writes (unlogged) are as the pages saw them.
   */
  private async readPaged (stream: string, group: string, paged: PagedRead, rev: number, epoch: string): Promise<GroupRead> {
    for (let attempt = 1; attempt <= MAX_SNAPSHOT_ATTEMPTS; attempt++) {
      const [texts, order] = await Promise.all([this.pageHash(this.groupKey(stream, group)), this.pageOrder(this.orderKey(stream, group))])
      // A snapshot asked for from now on may have been preceded by a write R1 does not include: it reads anew.
      paged.joinable = false
      const mark = await this.script(SCRIPTS.snapshotMark, [this.metaKey(stream, group), this.epochKey, this.floor(stream, group), epochCandidate()]) as unknown[]
      const endRev = Number(mark[0])
      const endEpoch = String(mark[2])
      const changes = endEpoch === epoch ? await this.logBetween(this.logKey(stream, group), rev, endRev) : null
      if (changes !== null) {
        const timestamps = new Map<string, number>()
        // Items created in (R0, R1], in the order of their last create: their place in the group, whatever
        // the order pages saw of them.
        const created = new Map<string, number>()
        for (const entry of changes) {
          const change = storedChange(entry)
          if (change === null) continue
          const id = entry.id!
          timestamps.set(id, entry.timestamp)
          if (change.kind === 'delete') {
            texts.delete(id)
            created.delete(id)
          } else {
            texts.set(id, change.text)
            if (change.kind === 'create') {
              created.delete(id)
              created.set(id, entry.rev)
            }
          }
        }
        this.observe(stream, group, Number(mark[1]))
        return { ...groupOrder(texts, order, created, timestamps), rev: endRev, timestamp: Number(mark[1]), epoch: endEpoch }
      }
      rev = endRev
      epoch = endEpoch
    }
    throw new BackendUnavailableError(`${stream}/${group} changed faster than its change log keeps while it was read (${MAX_SNAPSHOT_ATTEMPTS} attempts)`)
  }

  /** Every field of a hash, by HSCAN pages (a field changed meanwhile may be seen in either state, or twice). */
  private async pageHash (key: string): Promise<Map<string, string>> {
    const texts = new Map<string, string>()
    let cursor = '0'
    do {
      const [next, fields] = await this.run((redis) => redis.hscan(key, cursor, 'COUNT', this.config.snapshotPageSize))
      for (let at = 0; at < fields.length; at += 2) texts.set(fields[at], fields[at + 1])
      cursor = next
    } while (cursor !== '0')
    return texts
  }

  /**
   * The order index's items by ascending rev of their first insert, by pages (every rev is a score of its own). An
   * item created while it is paged may be seen at its old place, its new one, both or neither: the replay knows.
   */
  private async pageOrder (key: string): Promise<string[]> {
    const order: string[] = []
    let after = '-inf'
    for (;;) {
      const page = await this.run((redis) => redis.zrangebyscore(key, after, '+inf', 'WITHSCORES', 'LIMIT', 0, this.config.snapshotPageSize))
      for (let at = 0; at < page.length; at += 2) order.push(page[at])
      if (page.length < 2 * this.config.snapshotPageSize) return order
      after = `(${page[page.length - 1]}`
    }
  }

  /** The log entries (from, to], by pages; null when the log does not hold every one of them. */
  private async logBetween (key: string, from: number, to: number): Promise<LogEntry[] | null> {
    const entries: LogEntry[] = []
    while (from + entries.length < to) {
      const first = from + entries.length + 1
      const page = await this.run((redis) => redis.xrange(key, `${first}-0`, `${to}-0`, 'COUNT', this.config.snapshotPageSize))
      if (page.length === 0) return null
      for (const raw of page) {
        const entry = readLogEntry(raw)
        if (entry.rev !== from + entries.length + 1) return null
        entries.push(entry)
      }
    }
    return entries
  }

  async readChanges (stream: string, group: string, after: number, limit: number): Promise<ChangePage> {
    checkChangeRange(after, limit)
    const reply = await this.script(SCRIPTS.readChanges, [this.logKey(stream, group), this.metaKey(stream, group), this.epochKey, after, limit, epochCandidate()]) as unknown[]
    return { epoch: String(reply[0]), rev: Number(reply[1]), trimmed: Number(reply[2]), changes: (reply[3] as unknown[]).map(parseLogEntry) }
  }

  async snapshotItem (stream: string, group: string, id: string): Promise<ItemSnapshot> {
    const reply = await this.script(SCRIPTS.snapshotItem, [this.groupKey(stream, group), this.metaKey(stream, group), id, this.floor(stream, group)]) as unknown[]
    this.observe(stream, group, Number(reply[2]))
    const value = reply[0] === null || reply[0] === undefined ? null : this.readStored(String(reply[0]), `item "${id}" of ${stream}/${group}`)
    return { value: value === UNREADABLE ? null : value, rev: Number(reply[1]), timestamp: Number(reply[2]) }
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

/**
 * The read items in group order: by the rev of their first insert (the order pages, then the items created while
 * they were paged), then those the order index does not know (written by an engine) by id, as the whole-group
 * script orders them.
 */
function groupOrder (texts: Map<string, string>, order: string[], created: Map<string, number>, changed: Map<string, number>): Pick<GroupRead, 'ids' | 'texts' | 'timestamps'> {
  const ids: string[] = []
  const read: string[] = []
  const place = (id: string) => {
    const text = texts.get(id)
    if (text === undefined) return
    ids.push(id)
    read.push(text)
  }
  for (const id of order) {
    if (created.size === 0 || !created.has(id)) place(id)
  }
  for (const id of created.keys()) place(id)
  if (ids.length < texts.size) {
    const placed = new Set(ids)
    for (const id of [...texts.keys()].filter((id) => !placed.has(id)).sort()) place(id)
  }
  const timestamps: number[] = []
  if (changed.size > 0) {
    ids.forEach((id, at) => {
      const timestamp = changed.get(id)
      if (timestamp !== undefined) timestamps[at] = timestamp
    })
  }
  return { ids, texts: read, timestamps }
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
