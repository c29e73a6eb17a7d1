// KvStore's config: the shape a user writes (snake_case as in the iii config, or camelCase) and its normaliser.
// Apart from kv.ts so that checking options loads neither keyv nor SQLite.
import { OptionReader } from '../checks.js'
import {
  DEFAULT_CHANGE_LOG_MAX_CHANGES, DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES, readChangeLog, type ChangeLogRetention, type ChangeLogOptions
} from './change-log-config.js'

/** The class names (and `name`s) that pick KvStore. */
export const KV_ADAPTER_CLASSES = ['modules::streams::adapters::KvStore', 'modules::stream::adapters::KvStore', 'kv']
export const DEFAULT_STORE_METHOD = 'in_memory'
export const DEFAULT_FILE_PATH = './data/streams_store.db'
// The engine's ranges for its own persistence knobs. Here every write is stored at once and the feed is not a
// bounded channel, so both are no-ops; they are still checked, so a config the engine refuses is refused here too.
export const SAVE_INTERVAL_MS_RANGE = [100, 3_600_000] as const
export const CHANNEL_SIZE_RANGE = [1, 1_048_576] as const

/** KvStore's config as a user writes it; every key also in camelCase. */
export interface KvAdapterConfig {
  store_method?: 'in_memory' | 'file_based'
  storeMethod?: 'in_memory' | 'file_based'
  /** The SQLite file (`file_based`), relative to the working directory; missing folders are created. */
  file_path?: string
  filePath?: string
  /** The engine's save interval: checked (100..3 600 000), no effect (every write is saved at once). */
  save_interval_ms?: number
  saveIntervalMs?: number
  /** The engine's broadcast channel capacity: checked (1..1 048 576), no effect. */
  channel_size?: number
  channelSize?: number
  change_log?: ChangeLogOptions
  changeLog?: ChangeLogOptions
}

/** KvStore's checked config, as its constructor takes it. */
export type KvConfig =
  | { storeMethod: 'in_memory', changeLog: ChangeLogRetention }
  | { storeMethod: 'file_based', filePath: string, changeLog: ChangeLogRetention }

const KV_KEYS = ['storeMethod', 'filePath', 'saveIntervalMs', 'channelSize', 'changeLog']

/**
 * Checks and defaults a KvStore config; throws InvalidOptionError naming the key as spelled, under `where`
 * (the config's own path, e.g. `adapter.config`).
 */
export function normalizeKvConfig (raw: unknown, where = ''): KvConfig {
  const config = new OptionReader(raw, where)
  config.allowKeys(KV_KEYS)
  config.integer('saveIntervalMs', SAVE_INTERVAL_MS_RANGE[0], ...SAVE_INTERVAL_MS_RANGE)
  config.integer('channelSize', CHANNEL_SIZE_RANGE[0], ...CHANNEL_SIZE_RANGE)
  const storeMethod = config.oneOf('storeMethod', ['in_memory', 'file_based'] as const, DEFAULT_STORE_METHOD)
  const filePath = config.nonEmptyString('filePath', DEFAULT_FILE_PATH) // checked even when in_memory leaves it unused
  if (storeMethod === 'in_memory') return { storeMethod, changeLog: readChangeLog(config, DEFAULT_CHANGE_LOG_MAX_CHANGES) }
  return { storeMethod, filePath, changeLog: readChangeLog(config, DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES) }
}
