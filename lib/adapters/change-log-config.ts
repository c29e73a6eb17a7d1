// The `change_log` key every built-in adapter accepts: how much of each group's change log is kept.
import type { OptionReader } from '../checks.js'

/** Entries kept per group by the memory store. */
export const DEFAULT_CHANGE_LOG_MAX_CHANGES = 1000
/** Entries kept per group by the stores that outlive the process (SQLite, Redis). */
export const DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES = 10_000
/** Entries older than this are dropped: 7 days. */
export const DEFAULT_CHANGE_LOG_MAX_AGE_MS = 7 * 24 * 60 * 60 * 1000

/** `change_log` as a user writes it. */
export interface ChangeLogOptions {
  /** Entries kept per group; 0 keeps no log. */
  max_changes?: number
  maxChanges?: number
  max_age_ms?: number
  maxAgeMs?: number
}

export interface ChangeLogRetention {
  maxChanges: number
  maxAgeMs: number
}

/** Reads `change_log` from an adapter config; `maxChanges` defaults to the adapter's own default. */
export function readChangeLog (config: OptionReader, defaultMaxChanges: number): ChangeLogRetention {
  const changeLog = config.section('changeLog')
  changeLog.allowKeys(['maxChanges', 'maxAgeMs'])
  return {
    maxChanges: changeLog.integer('maxChanges', defaultMaxChanges, 0),
    maxAgeMs: changeLog.positiveInt('maxAgeMs', DEFAULT_CHANGE_LOG_MAX_AGE_MS)
  }
}
