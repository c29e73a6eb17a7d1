// The checks every option and adapter config goes through. A mapping is read as the user wrote it, in snake_case
// (the iii config) or camelCase: keys are folded to camelCase for the code, and the user's spelling is kept, so a
// refusal (InvalidOptionError) names the key as it was written (`adapter.config.redis_url`).
import { InvalidOptionError } from './errors.js'

export type Raw = Record<string, unknown>

export function isPlainObject (value: unknown): value is Raw {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
}

function camel (key: string): string {
  return key.replace(/_([a-z])/g, (_, letter: string) => letter.toUpperCase())
}

function snake (key: string): string {
  return key.replace(/[A-Z]/g, letter => `_${letter.toLowerCase()}`)
}

/** A user's mapping of options, folded to camelCase; every read checks the value and names the key as spelled. */
export class OptionReader {
  // No prototype: a `__proto__` key from JSON is a key like any other.
  private readonly values: Raw = Object.create(null)
  private readonly spelled: Record<string, string> = Object.create(null)

  /**
   * `where` is the dotted path of this mapping as the user spelled it (`adapter.config`), '' at the top.
   * Undefined reads as an empty mapping; giving both spellings of one key with different values is refused.
   */
  constructor (raw: unknown, readonly where = '') {
    if (raw === undefined) return
    if (!isPlainObject(raw)) throw new InvalidOptionError(where, 'expected an object')
    for (const [key, value] of Object.entries(raw)) {
      const name = camel(key)
      if (!Object.hasOwn(this.values, name)) {
        this.values[name] = value
        this.spelled[name] = key
      } else if (this.values[name] !== value) {
        throw new InvalidOptionError(this.path(key), `given twice (as ${this.spelled[name]} too) with different values`)
      }
    }
  }

  private path (key: string): string {
    return this.where === '' ? key : `${this.where}.${key}`
  }

  /** The dotted path of `key` as the user wrote it (snake_case when it was not written). */
  label (key: string): string {
    return this.path(this.spelled[key] ?? snake(key))
  }

  fail (key: string, reason: string): never {
    throw new InvalidOptionError(this.label(key), reason)
  }

  get (key: string): unknown {
    return this.values[key]
  }

  /** Refuses any key outside `allowed` (camelCase names). */
  allowKeys (allowed: readonly string[]): void {
    for (const name of Object.keys(this.values)) {
      if (!allowed.includes(name)) this.fail(name, `unknown key (expected one of ${allowed.map(snake).join(', ')})`)
    }
  }

  /** A nested mapping, read with the same rules. */
  section (key: string): OptionReader {
    return new OptionReader(this.values[key], this.label(key))
  }

  integer (key: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
    const value = this.values[key]
    if (value === undefined) return fallback
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
      this.fail(key, max === Number.MAX_SAFE_INTEGER
        ? `expected ${min === 1 ? 'a positive integer' : `an integer of at least ${min}`}`
        : `expected an integer from ${min} to ${max}`)
    }
    return value
  }

  positiveInt (key: string, fallback: number): number {
    return this.integer(key, fallback, 1)
  }

  oneOf<T extends string> (key: string, choices: readonly T[], fallback: T): T {
    const value = this.values[key]
    if (value === undefined) return fallback
    if (!choices.includes(value as T)) this.fail(key, `expected one of ${choices.map(c => `'${c}'`).join(', ')}`)
    return value as T
  }

  string (key: string, fallback: string): string {
    const value = this.values[key]
    if (value === undefined) return fallback
    if (typeof value !== 'string') this.fail(key, 'expected a string')
    return value
  }

  nonEmptyString (key: string, fallback: string): string {
    const value = this.values[key] === undefined ? fallback : this.values[key]
    if (typeof value !== 'string' || value === '') this.fail(key, 'expected a non-empty string')
    return value
  }

  boolean (key: string, fallback: boolean): boolean {
    const value = this.values[key] === undefined ? fallback : this.values[key]
    if (typeof value !== 'boolean') this.fail(key, 'expected a boolean')
    return value
  }
}
