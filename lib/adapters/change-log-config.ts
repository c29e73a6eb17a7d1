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
  return readRetention(config.section('changeLog'), defaultMaxChanges)
}

/** Checks a retention section (`change_log`, `feeds.retention`) and defaults what it leaves out. */
export function readRetention (section: OptionReader, defaultMaxChanges: number): ChangeLogRetention {
  section.allowKeys(['maxChanges', 'maxAgeMs'])
  return {
    maxChanges: section.integer('maxChanges', defaultMaxChanges, 0),
    maxAgeMs: section.positiveInt('maxAgeMs', DEFAULT_CHANGE_LOG_MAX_AGE_MS)
  }
}

/** The keys of a retention section that were given, checked (what `feeds.retention` sets). */
export function givenRetention (section: OptionReader): Partial<ChangeLogRetention> {
  const checked = readRetention(section, 0)
  const given: Partial<ChangeLogRetention> = {}
  if (section.get('maxChanges') !== undefined) given.maxChanges = checked.maxChanges
  if (section.get('maxAgeMs') !== undefined) given.maxAgeMs = checked.maxAgeMs
  return given
}
