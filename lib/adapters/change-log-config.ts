// The `change_log` key every built-in adapter accepts: how much of each group's change log is kept.
import type { OptionReader } from '../checks.js'

import { DEFAULT_CHANGE_LOG_MAX_AGE_MS, type ChangeLogRetention } from './adapter.js'

export { DEFAULT_CHANGE_LOG_MAX_AGE_MS, DEFAULT_CHANGE_LOG_MAX_CHANGES, DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES } from './adapter.js'
export type { ChangeLogRetention } from './adapter.js'

/** `change_log` as a user writes it. */
export interface ChangeLogOptions {
  /** Entries kept per group; 0 keeps no log. */
  max_changes?: number
  maxChanges?: number
  max_age_ms?: number
  maxAgeMs?: number
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
