// Every plugin option, its default and its check, in one place. Keys come in snake_case (the iii config)
// or camelCase; both are folded to one normalised object before the plugin does anything else.
import type { FastifyInstance } from 'fastify'
import type { AdapterFactory, StreamAdapter } from './adapters/adapter.js'
import { InvalidOptionError } from './errors.js'

export const DEFAULT_PATH = '/'
export const DEFAULT_PORT = 31112
export const DEFAULT_HOST = '0.0.0.0'
export const DEFAULT_MAX_PAYLOAD = 64 * 1024
export const DEFAULT_MAX_NAME_LENGTH = 256
export const DEFAULT_MAX_SUBSCRIPTIONS_PER_SOCKET = 256
export const DEFAULT_MAX_BUFFERED_BYTES = 8 * 1024 * 1024
export const DEFAULT_MAX_INVALID_FRAMES = 16
export const DEFAULT_FILE_PATH = './data/streams_store.db'
export const DEFAULT_REDIS_URL = 'redis://localhost:6379'
export const DEFAULT_REDIS_CONNECT_TIMEOUT_MS = 5000
export const DEFAULT_REDIS_COMMAND_TIMEOUT_MS = 2000
export const DEFAULT_DURABLE_STREAMS_PATH = '/v1/stream'
export const DEFAULT_LONG_POLL_TIMEOUT_MS = 20_000
export const DEFAULT_SSE_MAX_DURATION_MS = 60_000
export const DEFAULT_MAX_APPEND_BYTES = 16 * 1024 * 1024
export const DEFAULT_READ_CHUNK_BYTES = 1024 * 1024
export const DEFAULT_MAX_LIVE_READERS = 10_000
export const DEFAULT_MAX_STREAM_PATH_LENGTH = 1024
export const DEFAULT_CORS_ORIGIN = '*'

export const KV_ADAPTER_CLASSES = ['modules::streams::adapters::KvStore', 'modules::stream::adapters::KvStore', 'kv']
export const REDIS_ADAPTER_CLASSES = ['modules::streams::adapters::RedisAdapter', 'modules::stream::adapters::RedisAdapter', 'redis']

/** What an auth function receives: the engine's StreamAuthInput. */
export interface AuthInput {
  headers: Record<string, string>
  path: string
  query_params: Record<string, string[]>
  addr: string
}
export type AuthResult = { context?: unknown } | null | undefined | void
export type AuthFunction = (input: AuthInput) => AuthResult | Promise<AuthResult>

export type KvConfig = { kind: 'kv', storeMethod: 'in_memory' } | { kind: 'kv', storeMethod: 'file_based', filePath: string }
export interface RedisConfig {
  kind: 'redis'
  redisUrl: string
  client?: unknown
  keyPrefix: string
  connectTimeoutMs: number
  commandTimeoutMs: number
}
export type AdapterChoice =
  | KvConfig
  | RedisConfig
  | { kind: 'custom', name: string, factory: AdapterFactory, config: Record<string, unknown> }
  | { kind: 'instance', adapter: StreamAdapter }

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
  adapter?: { class?: string, name?: string, config?: Record<string, unknown> } | StreamAdapter
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
  /** Used by the standalone server only; accepted here so one config serves both. */
  port?: number
  host?: string
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
  port: number
  host: string
}

type Raw = Record<string, unknown>

function camel (key: string): string {
  return key.replace(/_([a-z])/g, (_, letter: string) => letter.toUpperCase())
}

/** Folds snake_case keys onto camelCase; giving both spellings of one key with different values is an error. */
function fold (raw: Raw, where: string): Raw {
  const out: Raw = {}
  for (const [key, value] of Object.entries(raw)) {
    const name = camel(key)
    if (Object.hasOwn(out, name) && out[name] !== value) throw new InvalidOptionError(`${where}${key}`, `given twice (as ${name} too) with different values`)
    out[name] = value
  }
  return out
}

function checkKeys (raw: Raw, allowed: string[], where: string): void {
  for (const key of Object.keys(raw)) {
    if (!allowed.includes(key)) throw new InvalidOptionError(`${where}${key}`, `unknown key (expected one of ${allowed.join(', ')})`)
  }
}

function positiveInt (raw: Raw, key: string, fallback: number, where = ''): number {
  const value = raw[key]
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) throw new InvalidOptionError(`${where}${key}`, 'expected a positive integer')
  return value
}

function oneOf<T extends string> (raw: Raw, key: string, choices: readonly T[], fallback: T, label = key): T {
  const value = raw[key]
  if (value === undefined) return fallback
  if (!choices.includes(value as T)) throw new InvalidOptionError(label, `expected one of ${choices.map(c => `'${c}'`).join(', ')}`)
  return value as T
}

function nonEmptyString (raw: Raw, key: string, fallback: string, where = ''): string {
  const value = raw[key]
  if (value === undefined) return fallback
  if (typeof value !== 'string' || value === '') throw new InvalidOptionError(`${where}${key}`, 'expected a non-empty string')
  return value
}

function isAdapterInstance (value: unknown): value is StreamAdapter {
  if (value === null || typeof value !== 'object') return false
  const candidate = value as Record<string, unknown>
  // Any contract method marks an adapter object; the plugin then checks it has all of them (STREAMS_ERR_INVALID_ADAPTER).
  return ['get', 'set', 'delete', 'getGroup', 'listGroups', 'listAll', 'update', 'publish', 'snapshotGroup', 'snapshotItem', 'subscribe', 'close']
    .some(name => typeof candidate[name] === 'function')
}

const KV_KEYS = ['storeMethod', 'filePath', 'saveIntervalMs', 'channelSize']
const REDIS_KEYS = ['redisUrl', 'client', 'keyPrefix', 'connectTimeoutMs', 'commandTimeoutMs']

/** Checks and defaults a RedisAdapter config (keys already folded to camelCase). */
function redisConfig (config: Raw): RedisConfig {
  checkKeys(config, REDIS_KEYS, 'adapter.config.')
  const redisUrl = nonEmptyString(config, 'redisUrl', DEFAULT_REDIS_URL, 'adapter.config.')
  if (!/^rediss?:\/\//.test(redisUrl)) throw new InvalidOptionError('adapter.config.redis_url', 'expected a redis:// or rediss:// URL')
  const client = config.client as { duplicate?: unknown, evalsha?: unknown, options?: { keyPrefix?: unknown } } | undefined
  if (client !== undefined && (client === null || typeof client !== 'object' || typeof client.duplicate !== 'function' || typeof client.evalsha !== 'function')) {
    throw new InvalidOptionError('adapter.config.client', 'expected an ioredis client')
  }
  if (client?.options?.keyPrefix) {
    throw new InvalidOptionError('adapter.config.client', 'an ioredis keyPrefix is not supported (it does not apply to the channel); use key_prefix')
  }
  const keyPrefix = config.keyPrefix ?? ''
  if (typeof keyPrefix !== 'string') throw new InvalidOptionError('adapter.config.key_prefix', 'expected a string')
  return {
    kind: 'redis',
    redisUrl,
    client,
    keyPrefix,
    connectTimeoutMs: positiveInt(config, 'connectTimeoutMs', DEFAULT_REDIS_CONNECT_TIMEOUT_MS, 'adapter.config.'),
    commandTimeoutMs: positiveInt(config, 'commandTimeoutMs', DEFAULT_REDIS_COMMAND_TIMEOUT_MS, 'adapter.config.')
  }
}

/** A RedisAdapter config as a user writes it (snake_case or camelCase), checked and defaulted. */
export function normalizeRedisConfig (raw: unknown): RedisConfig {
  if (raw !== undefined && (raw === null || typeof raw !== 'object' || Array.isArray(raw))) throw new InvalidOptionError('adapter.config', 'expected an object')
  return redisConfig(fold((raw ?? {}) as Raw, 'adapter.config.'))
}
function normalizeAdapter (value: unknown, factories: Record<string, AdapterFactory>): AdapterChoice {
  if (value === undefined) return { kind: 'kv', storeMethod: 'in_memory' }
  if (isAdapterInstance(value)) return { kind: 'instance', adapter: value }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new InvalidOptionError('adapter', 'expected { class, config }, { name, config } or an adapter object')
  const adapter = value as Raw
  checkKeys(adapter, ['class', 'name', 'config'], 'adapter.')
  if (adapter.class !== undefined && adapter.name !== undefined) throw new InvalidOptionError('adapter', 'give either class or name, not both')
  const id = adapter.class ?? adapter.name ?? KV_ADAPTER_CLASSES[0]
  if (typeof id !== 'string' || id === '') throw new InvalidOptionError('adapter.class', 'expected a non-empty string')
  const rawConfig = adapter.config ?? {}
  if (rawConfig === null || typeof rawConfig !== 'object' || Array.isArray(rawConfig)) throw new InvalidOptionError('adapter.config', 'expected an object')

  if (Object.hasOwn(factories, id)) {
    return { kind: 'custom', name: id, factory: factories[id], config: rawConfig as Raw }
  }
  const config = fold(rawConfig as Raw, 'adapter.config.')
  if (KV_ADAPTER_CLASSES.includes(id)) {
    checkKeys(config, KV_KEYS, 'adapter.config.')
    const storeMethod = oneOf(config, 'storeMethod', ['in_memory', 'file_based'] as const, 'in_memory', 'adapter.config.store_method')
    if (storeMethod === 'in_memory') return { kind: 'kv', storeMethod }
    return { kind: 'kv', storeMethod, filePath: nonEmptyString(config, 'filePath', DEFAULT_FILE_PATH, 'adapter.config.') }
  }
  if (REDIS_ADAPTER_CLASSES.includes(id)) return redisConfig(config)
  throw new InvalidOptionError('adapter.class', `unknown adapter "${id}" (expected KvStore, RedisAdapter, kv, redis or a name given in adapters)`)
}

const DURABLE_STREAMS_KEYS = ['path', 'longPollTimeoutMs', 'sseMaxDurationMs', 'maxAppendBytes', 'readChunkBytes', 'maxLiveReaders',
  'maxStreamPathLength', 'corsOrigin', 'authorizeFunction']

/** Checks and defaults the `durable_streams` option: false/absent is off, true takes every default. */
function durableStreamsSettings (value: unknown): DurableStreamsSettings | null {
  if (value === undefined || value === false) return null
  if (value !== true && (value === null || typeof value !== 'object' || Array.isArray(value))) {
    throw new InvalidOptionError('durable_streams', 'expected true, false or an object')
  }
  const where = 'durable_streams.'
  const raw = value === true ? {} : fold(value as Raw, where)
  checkKeys(raw, DURABLE_STREAMS_KEYS, where)
  const path = nonEmptyString(raw, 'path', DEFAULT_DURABLE_STREAMS_PATH, where)
  if (!/^\/[^?#]*[^/?#]$/.test(path)) throw new InvalidOptionError(`${where}path`, 'expected a path starting with "/", not ending with "/"')
  const corsOrigin = raw.corsOrigin === undefined ? DEFAULT_CORS_ORIGIN : raw.corsOrigin
  if (corsOrigin !== null && (typeof corsOrigin !== 'string' || corsOrigin === '')) throw new InvalidOptionError(`${where}cors_origin`, 'expected a non-empty string or null')
  const authorizeFunction = raw.authorizeFunction ?? null
  if (authorizeFunction !== null && (typeof authorizeFunction !== 'string' || authorizeFunction === '')) {
    throw new InvalidOptionError(`${where}authorize_function`, 'expected a function path (string)')
  }
  return {
    path,
    longPollTimeoutMs: positiveInt(raw, 'longPollTimeoutMs', DEFAULT_LONG_POLL_TIMEOUT_MS, where),
    sseMaxDurationMs: positiveInt(raw, 'sseMaxDurationMs', DEFAULT_SSE_MAX_DURATION_MS, where),
    maxAppendBytes: positiveInt(raw, 'maxAppendBytes', DEFAULT_MAX_APPEND_BYTES, where),
    readChunkBytes: positiveInt(raw, 'readChunkBytes', DEFAULT_READ_CHUNK_BYTES, where),
    maxLiveReaders: positiveInt(raw, 'maxLiveReaders', DEFAULT_MAX_LIVE_READERS, where),
    maxStreamPathLength: positiveInt(raw, 'maxStreamPathLength', DEFAULT_MAX_STREAM_PATH_LENGTH, where),
    corsOrigin,
    authorizeFunction
  }
}

const TOP_KEYS = ['path', 'durableStreams', 'authFunction', 'authFailure', 'joinFailure', 'adapter', 'adapters', 'injectId', 'maxPayload', 'maxNameLength',
  'maxSubscriptionsPerSocket', 'maxBufferedBytes', 'maxInvalidFrames', 'port', 'host']

/** Checks and defaults every option; throws InvalidOptionError (STREAMS_ERR_INVALID_OPTION) naming the key. */
export function normalizeOptions (input: unknown): NormalizedOptions {
  if (input === undefined || input === null) input = {}
  if (typeof input !== 'object' || Array.isArray(input)) throw new InvalidOptionError('(options)', 'expected an object')
  const raw = fold(input as Raw, '')
  checkKeys(raw, TOP_KEYS, '')

  const path = nonEmptyString(raw, 'path', DEFAULT_PATH)
  if (!path.startsWith('/')) throw new InvalidOptionError('path', 'expected a path starting with "/"')

  const authFunction = raw.authFunction ?? null
  if (authFunction !== null && typeof authFunction !== 'function' && (typeof authFunction !== 'string' || authFunction === '')) {
    throw new InvalidOptionError('auth_function', 'expected a function path (string) or a function')
  }

  const factories = raw.adapters ?? {}
  if (factories === null || typeof factories !== 'object' || Array.isArray(factories)) throw new InvalidOptionError('adapters', 'expected an object of adapter factories')
  for (const [name, factory] of Object.entries(factories)) {
    if (typeof factory !== 'function') throw new InvalidOptionError(`adapters.${name}`, 'expected a factory function')
  }

  const injectId = raw.injectId ?? true
  if (typeof injectId !== 'boolean') throw new InvalidOptionError('injectId', 'expected a boolean')

  const port = raw.port ?? DEFAULT_PORT
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) throw new InvalidOptionError('port', 'expected an integer from 0 to 65535')

  return {
    path,
    durableStreams: durableStreamsSettings(raw.durableStreams),
    authFunction: authFunction as NormalizedOptions['authFunction'],
    authFailure: oneOf(raw, 'authFailure', ['reject', 'anonymous'] as const, 'reject'),
    joinFailure: oneOf(raw, 'joinFailure', ['deny', 'allow'] as const, 'deny'),
    adapter: normalizeAdapter(raw.adapter, factories as Record<string, AdapterFactory>),
    injectId,
    maxPayload: positiveInt(raw, 'maxPayload', DEFAULT_MAX_PAYLOAD),
    maxNameLength: positiveInt(raw, 'maxNameLength', DEFAULT_MAX_NAME_LENGTH),
    maxSubscriptionsPerSocket: positiveInt(raw, 'maxSubscriptionsPerSocket', DEFAULT_MAX_SUBSCRIPTIONS_PER_SOCKET),
    maxBufferedBytes: positiveInt(raw, 'maxBufferedBytes', DEFAULT_MAX_BUFFERED_BYTES),
    maxInvalidFrames: positiveInt(raw, 'maxInvalidFrames', DEFAULT_MAX_INVALID_FRAMES),
    port,
    host: nonEmptyString(raw, 'host', DEFAULT_HOST)
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
