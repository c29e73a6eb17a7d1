// Every plugin option, its default and its check, in one place. Keys come in snake_case (the iii config)
// or camelCase; both are folded to one normalised object before the plugin does anything else.
import { isAbsolute } from 'node:path'
import type { FastifyInstance } from 'fastify'
import type { AdapterFactory, StreamAdapter } from './adapters/adapter.js'
import { KV_ADAPTER_CLASSES, normalizeKvConfig, type KvConfig } from './adapters/kv-config.js'
import { REDIS_ADAPTER_CLASSES, normalizeRedisConfig, type RedisConfig } from './adapters/redis-config.js'
import { givenRetention } from './adapters/change-log-config.js'
import type { ChangeLogRetention } from './adapters/adapter.js'
import { OptionReader, isPlainObject, type Raw } from './checks.js'
import { InvalidOptionError } from './errors.js'
import { MAX_SERVABLE_VALUE_DEPTH } from './values.js'
import type { AdapterOption } from './types.js'

export const DEFAULT_PATH = '/'
export const DEFAULT_AUTH_FAILURE = 'reject'
export const DEFAULT_JOIN_FAILURE = 'deny'
export const DEFAULT_INJECT_ID = true
export const DEFAULT_MAX_PAYLOAD = 64 * 1024
export const DEFAULT_MAX_NAME_LENGTH = 256
export const DEFAULT_MAX_SUBSCRIPTIONS_PER_SOCKET = 256
export const DEFAULT_MAX_BUFFERED_BYTES = 8 * 1024 * 1024
export const DEFAULT_MAX_INVALID_FRAMES = 16
// Limits and protection (README "Limits and protection").
export const DEFAULT_MAX_CONNECTIONS = 10_000
export const DEFAULT_MAX_CONNECTIONS_PER_IP = 1024
/** File descriptors kept free of stream sockets, so the app's HTTP routes and the backend still get some. */
export const FD_RESERVE = 256
export const DEFAULT_AUTH_TIMEOUT_MS = 10_000
export const DEFAULT_MAX_FRAME_RATE = 100
export const DEFAULT_FRAME_BURST = 512
export const DEFAULT_PING_INTERVAL_MS = 25_000
export const DEFAULT_MAX_VALUE_DEPTH = 64
export const DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
export const DEFAULT_MAX_UPDATE_OPS = 1000
/**
 * How long a sync frame may take to reach the client's socket before the socket is closed (1013): a sync is
 * exempt from max_buffered_bytes while it drains, so this is what bounds it. 60 s, nginx's send_timeout default.
 */
export const DEFAULT_SYNC_DRAIN_TIMEOUT_MS = 60_000
export const DEFAULT_FEEDS_PATH = '/v1/groups'
export const DEFAULT_FEEDS_LONG_POLL_TIMEOUT_MS = 30_000
export const DEFAULT_FEEDS_SSE_MAX_DURATION_MS = 60_000
export const DEFAULT_FEEDS_MAX_LIVE_READERS = 10_000
export const DEFAULT_FEEDS_MAX_PAGE_CHANGES = 1000
export const DEFAULT_DURABLE_STREAMS_PATH = '/v1/stream'
export const DEFAULT_DURABLE_STREAMS_LONG_POLL_TIMEOUT_MS = 20_000
export const DEFAULT_DURABLE_STREAMS_SSE_MAX_DURATION_MS = 60_000
export const DEFAULT_MAX_APPEND_BYTES = 16 * 1024 * 1024
export const DEFAULT_READ_CHUNK_BYTES = 1024 * 1024
export const DEFAULT_DURABLE_STREAMS_MAX_LIVE_READERS = 10_000
export const DEFAULT_MAX_STREAM_PATH_LENGTH = 1024
export const DEFAULT_CORS_ORIGIN = '*'
/**
 * How long a producer's append that arrived ahead of its predecessors (a pipelining client sends batches over
 * several connections, which may overtake each other) waits for them before it is refused as a gap (409).
 */
export const DEFAULT_PRODUCER_REORDER_WAIT_MS = 2000

/** The methods every adapter object must have (the StreamAdapter contract's required methods). */
export const ADAPTER_METHODS = ['get', 'set', 'delete', 'getGroup', 'listGroups', 'listAll', 'update', 'publish', 'snapshotGroup', 'snapshotItem', 'subscribe', 'close']

/** What an auth function receives: the engine's StreamAuthInput. */
export interface AuthInput {
  headers: Record<string, string>
  path: string
  query_params: Record<string, string[]>
  addr: string
}
export type AuthResult = { context?: unknown } | null | undefined | void
export type AuthFunction = (input: AuthInput) => AuthResult | Promise<AuthResult>

/** The adapter the options pick, checked; lib/adapters/build.ts builds it. */
export type AdapterChoice =
  | { kind: 'kv', config: KvConfig }
  | { kind: 'redis', config: RedisConfig }
  /** A factory given in `adapters`, named by `adapter.class` or `adapter.name`. */
  | { kind: 'factory', name: string, factory: AdapterFactory, config: Raw }
  /** A module named by `adapter.class` (a path, a `file:` URL or a package name) exporting a factory. */
  | { kind: 'module', specifier: string, config: Raw }
  /** `retention`: what `feeds.retention` sets, checked against the adapter's own at start (null: not given). */
  | { kind: 'instance', adapter: StreamAdapter, retention: Partial<ChangeLogRetention> | null }

/** The Durable Streams HTTP protocol's settings (`durable_streams: true` takes every default). */
export interface DurableStreamsSettings {
  /** URL prefix; a stream's URL is `${path}/${name}`. */
  path: string
  longPollTimeoutMs: number
  /** SSE responses end after this long so clients reconnect (and CDNs collapse). */
  sseMaxDurationMs: number
  /** Largest accepted PUT/POST body; bigger ones get 413. */
  maxAppendBytes: number
  /** Most bytes one catch-up read (or one SSE data event) carries. */
  readChunkBytes: number
  /** Open long-poll and SSE responses at once; more get 503. */
  maxLiveReaders: number
  maxStreamPathLength: number
  /** How long a producer's append waits for its predecessors before a sequence gap is answered (0: at once). */
  producerReorderWaitMs: number
  /** `Access-Control-Allow-Origin` of every response; null sends no CORS headers. */
  corsOrigin: string | null
  /** A registry function path asked `{ method, path, operation, context }` before each operation. */
  authorizeFunction: string | null
}

export interface StreamsOptions {
  path?: string
  durable_streams?: boolean | Record<string, unknown>
  durableStreams?: boolean | Record<string, unknown>
  auth_function?: string | AuthFunction
  authFunction?: string | AuthFunction
  authFailure?: 'reject' | 'anonymous'
  auth_failure?: 'reject' | 'anonymous'
  joinFailure?: 'deny' | 'allow'
  join_failure?: 'deny' | 'allow'
  /**
   * `{ class, config }` or `{ name, config }`: a built-in adapter (KvStore, RedisAdapter), a factory named in
   * `adapters`, or (`class` only) a module exporting a factory: a path relative to the working directory, an
   * absolute path, a `file:` URL or a package name. Or an adapter object (borrowed: never closed by the plugin).
   */
  adapter?: AdapterOption
  adapters?: Record<string, AdapterFactory>
  injectId?: boolean
  inject_id?: boolean
  maxPayload?: number
  max_payload?: number
  maxNameLength?: number
  max_name_length?: number
  maxSubscriptionsPerSocket?: number
  max_subscriptions_per_socket?: number
  maxBufferedBytes?: number
  max_buffered_bytes?: number
  maxInvalidFrames?: number
  max_invalid_frames?: number
  maxConnections?: number
  max_connections?: number
  maxConnectionsPerIp?: number
  max_connections_per_ip?: number
  /** Exact origins (`https://app.example`) or `'*'`; by default only the request's own host. */
  allowedOrigins?: string[] | '*'
  allowed_origins?: string[] | '*'
  authTimeoutMs?: number
  auth_timeout_ms?: number
  maxFrameRate?: number
  max_frame_rate?: number
  frameBurst?: number
  frame_burst?: number
  /** 0 turns the heartbeat off. */
  pingIntervalMs?: number
  ping_interval_ms?: number
  maxValueDepth?: number
  max_value_depth?: number
  maxValueBytes?: number
  max_value_bytes?: number
  maxUpdateOps?: number
  max_update_ops?: number
  /** How long a sync frame (exempt from `max_buffered_bytes`) may take to drain before the socket is closed (1013). */
  syncDrainTimeoutMs?: number
  sync_drain_timeout_ms?: number
  healthPath?: string
  health_path?: string
  metricsPath?: string
  metrics_path?: string
  /** A prom-client Registry to put the metrics on (instead of, or as well as, `metrics_path`). */
  metricsRegistry?: unknown
  metrics_registry?: unknown
  /** Group feeds over the Durable Streams read protocol: off unless given (`true` for the defaults). */
  feeds?: boolean | FeedsOptions
  /** Ignored by the plugin (the app listens where it is told): the standalone command's port, accepted so one iii config block serves both. */
  port?: unknown
  /** Ignored by the plugin: the standalone command's host, accepted so one iii config block serves both. */
  host?: unknown
}

export interface FeedsOptions {
  path?: string
  long_poll_timeout_ms?: number
  longPollTimeoutMs?: number
  sse_max_duration_ms?: number
  sseMaxDurationMs?: number
  max_live_readers?: number
  maxLiveReaders?: number
  max_page_changes?: number
  maxPageChanges?: number
  /**
   * How much of each group's change log the feeds can read back: set on the adapter the plugin builds (what its
   * `change_log` sets); a key left out takes the adapter's default. Offsets older than what is kept answer 410.
   */
  retention?: { max_changes?: number, maxChanges?: number, max_age_ms?: number, maxAgeMs?: number }
}

export interface FeedsConfig {
  /** Feeds are served at `{path}/{stream}/{group}`. */
  path: string
  /** How long a long-poll read waits for a change before answering 204. */
  longPollTimeoutMs: number
  /** An SSE response is ended after this long; the reader reconnects from its offset. */
  sseMaxDurationMs: number
  /** Long-polls and SSE responses open at once; one more is refused with 503. */
  maxLiveReaders: number
  /** Changes in one response at most (and the ceiling of the `limit` query parameter). */
  maxPageChanges: number
  /** The keys `feeds.retention` gave (null: not given); the adapter's `change_log` then holds them. */
  retention: Partial<ChangeLogRetention> | null
}

export interface NormalizedOptions {
  path: string
  durableStreams: DurableStreamsSettings | null
  authFunction: string | AuthFunction | null
  authFailure: 'reject' | 'anonymous'
  joinFailure: 'deny' | 'allow'
  adapter: AdapterChoice
  injectId: boolean
  maxPayload: number
  maxNameLength: number
  maxSubscriptionsPerSocket: number
  maxBufferedBytes: number
  maxInvalidFrames: number
  /** null when feeds are off. */
  feeds: FeedsConfig | null
  limits: LimitOptions
  operations: OperationOptions
}

export interface LimitOptions {
  maxConnections: number
  maxConnectionsPerIp: number
  /** null: same origin as the request's Host. */
  allowedOrigins: string[] | '*' | null
  authTimeoutMs: number
  maxFrameRate: number
  frameBurst: number
  pingIntervalMs: number
  maxValueDepth: number
  maxValueBytes: number
  maxUpdateOps: number
  syncDrainTimeoutMs: number
}

export interface OperationOptions {
  healthPath: string | null
  metricsPath: string | null
  metricsRegistry: unknown
}

function isAdapterInstance (value: unknown): value is StreamAdapter {
  if (value === null || typeof value !== 'object') return false
  const candidate = value as Raw
  // Any contract method marks an adapter object; the plugin then checks it has all of them (STREAMS_ERR_INVALID_ADAPTER).
  return ADAPTER_METHODS.some(name => typeof candidate[name] === 'function')
}

/**
 * How `adapter.class` names a module, or null when it does not: an iii class name (`a::b`) or anything else.
 * Paths start with `./`, `../` or `/` (or are absolute on this platform); packages follow npm's naming.
 */
export function adapterModuleKind (id: string): 'url' | 'path' | 'package' | null {
  if (id.startsWith('file:')) return 'url'
  if (/^\.{1,2}[\\/]/.test(id) || isAbsolute(id)) return 'path'
  if (/^(@[a-z0-9][\w.-]*\/)?[a-z0-9][\w.-]*(\/[\w.-]+)*$/i.test(id)) return 'package'
  return null
}

function normalizeAdapter (value: unknown, factories: Record<string, AdapterFactory>): AdapterChoice {
  if (value === undefined) return { kind: 'kv', config: normalizeKvConfig(undefined, 'adapter.config') }
  if (isAdapterInstance(value)) return { kind: 'instance', adapter: value, retention: null }
  if (!isPlainObject(value)) throw new InvalidOptionError('adapter', 'expected { class, config }, { name, config } or an adapter object')
  const adapter = new OptionReader(value, 'adapter')
  adapter.allowKeys(['class', 'name', 'config'])
  const className = adapter.get('class')
  if (className !== undefined && adapter.get('name') !== undefined) adapter.fail('name', 'give either class or name, not both')
  const key = className !== undefined ? 'class' : 'name'
  const id = adapter.nonEmptyString(key, KV_ADAPTER_CLASSES[0])
  const config = adapter.get('config') ?? {}
  if (!isPlainObject(config)) return adapter.fail('config', 'expected an object')

  if (Object.hasOwn(factories, id)) return { kind: 'factory', name: id, factory: factories[id], config }
  if (KV_ADAPTER_CLASSES.includes(id)) return { kind: 'kv', config: normalizeKvConfig(config, 'adapter.config') }
  if (REDIS_ADAPTER_CLASSES.includes(id)) return { kind: 'redis', config: normalizeRedisConfig(config, 'adapter.config') }
  if (key === 'class' && adapterModuleKind(id) !== null) return { kind: 'module', specifier: id, config }
  return adapter.fail(key, `unknown adapter "${id}" (expected KvStore, RedisAdapter, kv, redis, a name given in adapters${key === 'class' ? ', or a module path or package name' : ''})`)
}

/** An option that is off (absent, false), on with its defaults (true) or on with settings: null when off. */
function switchedSection (raw: OptionReader, key: string): OptionReader | null {
  const value = raw.get(key)
  if (value === undefined || value === false) return null
  if (value !== true && !isPlainObject(value)) return raw.fail(key, 'expected true, false or an object')
  return value === true ? new OptionReader(undefined, raw.label(key)) : raw.section(key)
}

const DURABLE_STREAMS_KEYS = ['path', 'longPollTimeoutMs', 'sseMaxDurationMs', 'maxAppendBytes', 'readChunkBytes', 'maxLiveReaders',
  'maxStreamPathLength', 'producerReorderWaitMs', 'corsOrigin', 'authorizeFunction']

/** Checks and defaults the `durable_streams` option: false/absent is off, true takes every default. */
function durableStreamsSettings (raw: OptionReader): DurableStreamsSettings | null {
  const settings = switchedSection(raw, 'durableStreams')
  if (settings === null) return null
  settings.allowKeys(DURABLE_STREAMS_KEYS)
  const path = settings.nonEmptyString('path', DEFAULT_DURABLE_STREAMS_PATH)
  if (!/^\/[^?#]*[^/?#]$/.test(path)) settings.fail('path', 'expected a path starting with "/", not ending with "/"')
  const corsOrigin = settings.get('corsOrigin') === undefined ? DEFAULT_CORS_ORIGIN : settings.get('corsOrigin')
  if (corsOrigin !== null && (typeof corsOrigin !== 'string' || corsOrigin === '')) settings.fail('corsOrigin', 'expected a non-empty string or null')
  const authorizeFunction = settings.get('authorizeFunction') ?? null
  if (authorizeFunction !== null && (typeof authorizeFunction !== 'string' || authorizeFunction === '')) {
    settings.fail('authorizeFunction', 'expected a function path (string)')
  }
  return {
    path,
    longPollTimeoutMs: settings.positiveInt('longPollTimeoutMs', DEFAULT_DURABLE_STREAMS_LONG_POLL_TIMEOUT_MS),
    sseMaxDurationMs: settings.positiveInt('sseMaxDurationMs', DEFAULT_DURABLE_STREAMS_SSE_MAX_DURATION_MS),
    maxAppendBytes: settings.positiveInt('maxAppendBytes', DEFAULT_MAX_APPEND_BYTES),
    readChunkBytes: settings.positiveInt('readChunkBytes', DEFAULT_READ_CHUNK_BYTES),
    maxLiveReaders: settings.positiveInt('maxLiveReaders', DEFAULT_DURABLE_STREAMS_MAX_LIVE_READERS),
    maxStreamPathLength: settings.positiveInt('maxStreamPathLength', DEFAULT_MAX_STREAM_PATH_LENGTH),
    producerReorderWaitMs: settings.integer('producerReorderWaitMs', DEFAULT_PRODUCER_REORDER_WAIT_MS, 0),
    corsOrigin: corsOrigin as string | null,
    authorizeFunction: authorizeFunction as string | null
  }
}

const TOP_KEYS = ['path', 'authFunction', 'authFailure', 'joinFailure', 'adapter', 'adapters', 'injectId', 'maxPayload', 'maxNameLength',
  'maxSubscriptionsPerSocket', 'maxBufferedBytes', 'maxInvalidFrames', 'feeds', 'durableStreams', 'port', 'host',
  'maxConnections', 'maxConnectionsPerIp', 'allowedOrigins', 'authTimeoutMs', 'maxFrameRate', 'frameBurst', 'pingIntervalMs',
  'maxValueDepth', 'maxValueBytes', 'maxUpdateOps', 'syncDrainTimeoutMs', 'healthPath', 'metricsPath', 'metricsRegistry']

/** The limits that protect the server from its clients (README "Limits and protection"). */
function limitOptions (raw: OptionReader): LimitOptions {
  const origins = raw.get('allowedOrigins')
  let allowedOrigins: LimitOptions['allowedOrigins'] = null
  if (origins === '*') allowedOrigins = '*'
  else if (origins !== undefined) {
    if (!Array.isArray(origins) || origins.some(origin => typeof origin !== 'string' || !/^[a-z][a-z0-9+.-]*:\/\/[^/?#]+$/i.test(origin))) {
      raw.fail('allowedOrigins', "expected '*' or an array of origins (scheme://host[:port])")
    }
    allowedOrigins = (origins as string[]).map(origin => origin.toLowerCase())
  }
  return {
    maxConnections: raw.positiveInt('maxConnections', DEFAULT_MAX_CONNECTIONS),
    maxConnectionsPerIp: raw.positiveInt('maxConnectionsPerIp', DEFAULT_MAX_CONNECTIONS_PER_IP),
    allowedOrigins,
    authTimeoutMs: raw.positiveInt('authTimeoutMs', DEFAULT_AUTH_TIMEOUT_MS),
    maxFrameRate: raw.positiveInt('maxFrameRate', DEFAULT_MAX_FRAME_RATE),
    frameBurst: raw.positiveInt('frameBurst', DEFAULT_FRAME_BURST),
    pingIntervalMs: raw.integer('pingIntervalMs', DEFAULT_PING_INTERVAL_MS, 0),
    maxValueDepth: raw.integer('maxValueDepth', DEFAULT_MAX_VALUE_DEPTH, 1, MAX_SERVABLE_VALUE_DEPTH),
    maxValueBytes: raw.positiveInt('maxValueBytes', DEFAULT_MAX_VALUE_BYTES),
    maxUpdateOps: raw.positiveInt('maxUpdateOps', DEFAULT_MAX_UPDATE_OPS),
    syncDrainTimeoutMs: raw.positiveInt('syncDrainTimeoutMs', DEFAULT_SYNC_DRAIN_TIMEOUT_MS)
  }
}

/** A route path option: absent (off) or a path starting with "/". */
function optionalPath (raw: OptionReader, key: string): string | null {
  const value = raw.get(key)
  if (value === undefined || value === null) return null
  if (typeof value !== 'string' || !value.startsWith('/')) return raw.fail(key, 'expected a path starting with "/"')
  return value
}

/** Health and metrics routes, both off by default, each on a path of its own. */
function operationOptions (raw: OptionReader, streamPath: string): OperationOptions {
  const registry = raw.get('metricsRegistry') ?? null
  if (registry !== null && typeof (registry as { registerMetric?: unknown }).registerMetric !== 'function') {
    raw.fail('metricsRegistry', 'expected a prom-client Registry')
  }
  const healthPath = optionalPath(raw, 'healthPath')
  const metricsPath = optionalPath(raw, 'metricsPath')
  if (healthPath === streamPath) raw.fail('healthPath', 'must differ from path')
  if (metricsPath !== null && (metricsPath === streamPath || metricsPath === healthPath)) raw.fail('metricsPath', 'must differ from path and health_path')
  return { healthPath, metricsPath, metricsRegistry: registry }
}

const FEEDS_KEYS = ['path', 'longPollTimeoutMs', 'sseMaxDurationMs', 'maxLiveReaders', 'maxPageChanges', 'retention']

/** Checks and defaults the `feeds` option: off (absent, false), on with defaults (true) or on with settings. */
function normalizeFeeds (raw: OptionReader): FeedsConfig | null {
  const feeds = switchedSection(raw, 'feeds')
  if (feeds === null) return null
  feeds.allowKeys(FEEDS_KEYS)
  const path = feeds.nonEmptyString('path', DEFAULT_FEEDS_PATH)
  if (!/^\/[^?#:*]*[^/?#:*]$/.test(path)) feeds.fail('path', 'expected a path starting with "/", not ending with "/", without ?, #, : or *')
  return {
    path,
    longPollTimeoutMs: feeds.positiveInt('longPollTimeoutMs', DEFAULT_FEEDS_LONG_POLL_TIMEOUT_MS),
    sseMaxDurationMs: feeds.positiveInt('sseMaxDurationMs', DEFAULT_FEEDS_SSE_MAX_DURATION_MS),
    maxLiveReaders: feeds.positiveInt('maxLiveReaders', DEFAULT_FEEDS_MAX_LIVE_READERS),
    maxPageChanges: feeds.positiveInt('maxPageChanges', DEFAULT_FEEDS_MAX_PAGE_CHANGES),
    retention: feeds.get('retention') === undefined ? null : givenRetention(feeds.section('retention'))
  }
}

/**
 * Applies `feeds.retention` to the adapter: a built-in adapter the plugin builds takes it as its `change_log`
 * (given in both places, they must agree); an adapter object is checked at start (lib/adapters/build.ts); a
 * user's factory keeps its own retention, so the option is refused there.
 */
function withFeedsRetention (choice: AdapterChoice, retention: Partial<ChangeLogRetention> | null, raw: OptionReader): AdapterChoice {
  if (retention === null) return choice
  const fail = (message: string): never => raw.section('feeds').fail('retention', message)
  switch (choice.kind) {
    case 'instance':
      return { ...choice, retention }
    case 'factory':
    case 'module':
      return fail('applies to the built-in adapters (KvStore, RedisAdapter) only; a user adapter keeps its own retention')
    case 'kv':
    case 'redis': {
      const config = (raw.get('adapter') as { config?: Record<string, unknown> } | undefined)?.config ?? {}
      const changeLog = { ...choice.config.changeLog, ...retention }
      if ((Object.hasOwn(config, 'change_log') || Object.hasOwn(config, 'changeLog')) && !sameRetention(changeLog, choice.config.changeLog)) {
        fail('differs from adapter.config.change_log: give the retention in one place')
      }
      return choice.kind === 'kv' ? { kind: 'kv', config: { ...choice.config, changeLog } } : { kind: 'redis', config: { ...choice.config, changeLog } }
    }
  }
}

export function sameRetention (a: ChangeLogRetention, b: Partial<ChangeLogRetention>): boolean {
  return (b.maxChanges === undefined || a.maxChanges === b.maxChanges) && (b.maxAgeMs === undefined || a.maxAgeMs === b.maxAgeMs)
}

/** Checks and defaults every option; throws InvalidOptionError (STREAMS_ERR_INVALID_OPTION) naming the key as spelled. */
export function normalizeOptions (input: unknown): NormalizedOptions {
  const raw = new OptionReader(input ?? undefined)
  raw.allowKeys(TOP_KEYS)

  const path = raw.nonEmptyString('path', DEFAULT_PATH)
  if (!path.startsWith('/')) raw.fail('path', 'expected a path starting with "/"')

  const authFunction = raw.get('authFunction') ?? null
  if (authFunction !== null && typeof authFunction !== 'function' && (typeof authFunction !== 'string' || authFunction === '')) {
    raw.fail('authFunction', 'expected a function path (string) or a function')
  }

  const factories = raw.get('adapters') ?? {}
  if (!isPlainObject(factories)) return raw.fail('adapters', 'expected an object of adapter factories')
  for (const [name, factory] of Object.entries(factories)) {
    if (typeof factory !== 'function') throw new InvalidOptionError(`${raw.label('adapters')}.${name}`, 'expected a factory function')
  }

  const feeds = normalizeFeeds(raw)
  // `port` and `host` are the standalone command's (lib/config.ts checks them): tolerated, not read.
  return {
    path,
    durableStreams: durableStreamsSettings(raw),
    authFunction: authFunction as NormalizedOptions['authFunction'],
    authFailure: raw.oneOf('authFailure', ['reject', 'anonymous'] as const, DEFAULT_AUTH_FAILURE),
    joinFailure: raw.oneOf('joinFailure', ['deny', 'allow'] as const, DEFAULT_JOIN_FAILURE),
    adapter: withFeedsRetention(normalizeAdapter(raw.get('adapter'), factories as Record<string, AdapterFactory>), feeds?.retention ?? null, raw),
    injectId: raw.boolean('injectId', DEFAULT_INJECT_ID),
    maxPayload: raw.positiveInt('maxPayload', DEFAULT_MAX_PAYLOAD),
    maxNameLength: raw.positiveInt('maxNameLength', DEFAULT_MAX_NAME_LENGTH),
    maxSubscriptionsPerSocket: raw.positiveInt('maxSubscriptionsPerSocket', DEFAULT_MAX_SUBSCRIPTIONS_PER_SOCKET),
    maxBufferedBytes: raw.positiveInt('maxBufferedBytes', DEFAULT_MAX_BUFFERED_BYTES),
    maxInvalidFrames: raw.positiveInt('maxInvalidFrames', DEFAULT_MAX_INVALID_FRAMES),
    feeds,
    limits: limitOptions(raw),
    operations: operationOptions(raw, path)
  }
}

/** Resolves a dotted path (`motia.streams.authenticate`) on the Fastify instance's decorators. */
export function resolveDotted (app: FastifyInstance, path: string): unknown {
  let node: unknown = app
  let parent: unknown = null
  for (const key of path.split('.')) {
    if (node === null || node === undefined || (typeof node !== 'object' && typeof node !== 'function')) return undefined
    if (key === '__proto__' || key === 'constructor' || key === 'prototype') return undefined
    parent = node
    node = (node as Record<string, unknown>)[key]
  }
  return typeof node === 'function' ? (node as (...args: unknown[]) => unknown).bind(parent) : node
}
