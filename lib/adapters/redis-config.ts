// RedisAdapter's config: the shape a user writes (snake_case as in the iii config, or camelCase) and its
// normaliser. Apart from redis.ts so that checking options does not load ioredis (the client is only a type here).
import type { Redis } from 'ioredis'
import { OptionReader } from '../checks.js'
import { DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES, readChangeLog, type ChangeLogRetention, type ChangeLogOptions } from './change-log-config.js'

/** The class names (and `name`s) that pick RedisAdapter. */
export const REDIS_ADAPTER_CLASSES = ['modules::streams::adapters::RedisAdapter', 'modules::stream::adapters::RedisAdapter', 'redis']
export const DEFAULT_REDIS_URL = 'redis://localhost:6379'
export const DEFAULT_KEY_PREFIX = ''
export const DEFAULT_REDIS_CONNECT_TIMEOUT_MS = 5000
export const DEFAULT_REDIS_COMMAND_TIMEOUT_MS = 2000
/**
 * Items a group snapshot reads per Redis command (HSCAN COUNT, ZRANGEBYSCORE LIMIT, XRANGE COUNT). A group of at
 * most this many items is read by one script; a bigger one in pages, so Redis serves other clients between them.
 */
export const DEFAULT_SNAPSHOT_PAGE_SIZE = 1000

/** RedisAdapter's config as a user writes it; every key also in camelCase. */
export interface RedisAdapterConfig {
  /** `redis://` or `rediss://` URL; ignored when `client` is given. */
  redis_url?: string
  redisUrl?: string
  /** A caller-owned ioredis client: used for commands, duplicated for the subscriber, never closed by the adapter. */
  client?: Redis
  /** Prepended to every key and to the channel. */
  key_prefix?: string
  keyPrefix?: string
  connect_timeout_ms?: number
  connectTimeoutMs?: number
  command_timeout_ms?: number
  commandTimeoutMs?: number
  snapshot_page_size?: number
  snapshotPageSize?: number
  change_log?: ChangeLogOptions
  changeLog?: ChangeLogOptions
}

/** RedisAdapter's checked config, as its constructor takes it. */
export interface RedisConfig {
  redisUrl: string
  client?: Redis
  keyPrefix: string
  connectTimeoutMs: number
  commandTimeoutMs: number
  snapshotPageSize: number
  changeLog: ChangeLogRetention
}

const REDIS_KEYS = ['redisUrl', 'client', 'keyPrefix', 'connectTimeoutMs', 'commandTimeoutMs', 'snapshotPageSize', 'changeLog']

/**
 * Checks and defaults a RedisAdapter config; throws InvalidOptionError naming the key as spelled, under `where`
 * (the config's own path, e.g. `adapter.config`).
 */
export function normalizeRedisConfig (raw: unknown, where = ''): RedisConfig {
  const config = new OptionReader(raw, where)
  config.allowKeys(REDIS_KEYS)
  const redisUrl = config.nonEmptyString('redisUrl', DEFAULT_REDIS_URL)
  if (!/^rediss?:\/\//.test(redisUrl)) config.fail('redisUrl', 'expected a redis:// or rediss:// URL')
  const client = config.get('client') as { duplicate?: unknown, evalsha?: unknown, options?: { keyPrefix?: unknown } } | undefined
  if (client !== undefined && (client === null || typeof client !== 'object' || typeof client.duplicate !== 'function' || typeof client.evalsha !== 'function')) {
    config.fail('client', 'expected an ioredis client')
  }
  if (client?.options?.keyPrefix) config.fail('client', 'an ioredis keyPrefix is not supported (it does not apply to the channel); use key_prefix')
  const keyPrefix = config.string('keyPrefix', DEFAULT_KEY_PREFIX)
  // Keys are `{prefix}stream:…`: a prefix holding "stream:" would make the adapter with the prefix before it
  // (`{prefix}` up to there) list this adapter's groups as its own.
  if (keyPrefix.includes('stream:')) config.fail('keyPrefix', 'must not contain "stream:"')
  return {
    redisUrl,
    client: client as Redis | undefined,
    keyPrefix,
    connectTimeoutMs: config.positiveInt('connectTimeoutMs', DEFAULT_REDIS_CONNECT_TIMEOUT_MS),
    commandTimeoutMs: config.positiveInt('commandTimeoutMs', DEFAULT_REDIS_COMMAND_TIMEOUT_MS),
    snapshotPageSize: config.positiveInt('snapshotPageSize', DEFAULT_SNAPSHOT_PAGE_SIZE),
    changeLog: readChangeLog(config, DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES)
  }
}
