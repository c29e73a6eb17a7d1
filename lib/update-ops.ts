// The engine's atomic update operations (iii `engine/src/update_ops.rs`), applied to a copy of a stored value,
// case by case as the engine does, so an engine and this plugin sharing one store write the same value.
// A malformed op (one the engine fails to deserialize) refuses the whole call; an op that cannot apply is
// reported with the engine's code and skipped, never thrown: the other ops still apply.
import { InvalidArgumentError } from './errors.js'

/** A literal key, or literal keys from the root (a dot is never a separator). `''`, `[]`, null: the root. */
export type Path = string | string[]

export type UpdateOp =
  | { type: 'set', path: string, value?: unknown }
  | { type: 'merge', path?: Path | null, value: Record<string, unknown> }
  | { type: 'increment', path: string, by: number }
  | { type: 'decrement', path: string, by: number }
  | { type: 'append', path?: Path | null, value: unknown }
  | { type: 'remove', path: string }

export interface UpdateOpError {
  op_index: number
  /** The engine's code, e.g. `append.type_mismatch`, `merge.path.empty_segment`. */
  code: string
  message: string
  doc_url: string
}

// The engine's bounds (also mirrored in its Redis Lua): paths for every op, values for merge.
export const MAX_PATH_DEPTH = 32
export const MAX_SEGMENT_BYTES = 256
export const MAX_MERGE_VALUE_DEPTH = 16
export const MAX_MERGE_VALUE_KEYS = 1024
/** Where every reported op error points, as in the engine. */
export const UPDATE_OP_DOC_URL = 'https://iii.dev/docs/workers/iii-state#error-codes'

// Keys through which a consumer's Object.assign-style spreading could reach a prototype.
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype'])
const OP_TYPES = new Set(['set', 'merge', 'increment', 'decrement', 'append', 'remove'])
// `by` is an i64 in the engine; integers are exact there between these bounds (i64 min, u64 max).
const I64_MIN = -(2n ** 63n)
const U64_MAX = 2n ** 64n - 1n

type JsonObject = Record<string, unknown>

class OpFailure extends Error {
  constructor (readonly code: string, message: string) { super(message) }
}

export function isPlainObject (value: unknown): value is JsonObject {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false
  const proto = Object.getPrototypeOf(value)
  return proto === Object.prototype || proto === null
}

function typeName (value: unknown): string {
  if (value === null || value === undefined) return 'null'
  if (Array.isArray(value)) return 'array'
  return isPlainObject(value) ? 'object' : typeof value
}

const isPath = (path: unknown): boolean =>
  path === undefined || path === null || typeof path === 'string' || (Array.isArray(path) && path.every(segment => typeof segment === 'string'))

/** What the engine's deserializer refuses; `undefined` is a missing member. */
function malformation (op: unknown): string | null {
  if (!isPlainObject(op)) return 'an op must be an object'
  if (typeof op.type !== 'string' || !OP_TYPES.has(op.type)) return `unknown op type ${JSON.stringify(op.type) ?? 'undefined'}`
  switch (op.type) {
    case 'merge':
    case 'append':
      if (!isPath(op.path)) return 'path must be a string or an array of strings'
      return op.value === undefined ? 'value is missing' : null
    case 'increment':
    case 'decrement':
      if (typeof op.path !== 'string') return 'path must be a string'
      return typeof op.by === 'number' && Number.isInteger(op.by) && op.by >= -(2 ** 63) && op.by <= 2 ** 63
        ? null
        : 'by must be a 64-bit integer'
    default: // set, remove: `value` of set may be absent (it is then null)
      return typeof op.path === 'string' ? null : 'path must be a string'
  }
}

/** Refuses the whole call, as the engine does, when `ops` is not an array of well-formed ops. */
export function checkUpdateOps (ops: unknown): asserts ops is UpdateOp[] {
  if (!Array.isArray(ops)) throw new InvalidArgumentError('ops must be an array of update operations')
  ops.forEach((op, index) => {
    const problem = malformation(op)
    if (problem !== null) throw new InvalidArgumentError(`ops[${index}]: ${problem}`)
  })
}

/** Merge and append paths: absent, `''` and `[]` are the root; a string is one literal key. */
function segmentsOf (path: Path | null | undefined): string[] {
  if (path === undefined || path === null || path === '') return []
  return typeof path === 'string' ? [path] : path
}

function checkPath (op: string, segments: string[]): void {
  if (segments.length > MAX_PATH_DEPTH) {
    throw new OpFailure(`${op}.path.too_deep`, `path of ${segments.length} segments, over the ${MAX_PATH_DEPTH} allowed`)
  }
  for (const segment of segments) {
    if (segment === '') throw new OpFailure(`${op}.path.empty_segment`, 'path has an empty segment')
    const bytes = Buffer.byteLength(segment)
    if (bytes > MAX_SEGMENT_BYTES) throw new OpFailure(`${op}.path.segment_too_long`, `path segment of ${bytes} bytes, over the ${MAX_SEGMENT_BYTES} allowed`)
    if (FORBIDDEN_KEYS.has(segment)) throw new OpFailure(`${op}.path.proto_polluted`, `path segment "${segment}" is not allowed`)
  }
}

/** True when the JSON nesting of `value` (an object or array counts one level) exceeds `limit`. */
function deeperThan (value: unknown, limit: number): boolean {
  if (value === null || typeof value !== 'object') return false
  if (limit === 0) return true
  return Object.values(value).some(child => deeperThan(child, limit - 1))
}

/** The engine checks only the merge value's top-level keys for count and prototype names, and its whole depth. */
function checkMergeValue (value: unknown): asserts value is JsonObject {
  if (!isPlainObject(value)) throw new OpFailure('merge.value.not_an_object', 'merge value must be an object')
  const keys = Object.keys(value)
  if (keys.length > MAX_MERGE_VALUE_KEYS) {
    throw new OpFailure('merge.value.too_many_keys', `merge value has ${keys.length} top-level keys, over the ${MAX_MERGE_VALUE_KEYS} allowed`)
  }
  const forbidden = keys.find(key => FORBIDDEN_KEYS.has(key))
  if (forbidden !== undefined) throw new OpFailure('merge.value.proto_polluted', `merge value key "${forbidden}" is not allowed`)
  if (deeperThan(value, MAX_MERGE_VALUE_DEPTH)) throw new OpFailure('merge.value.too_deep', `merge value nested deeper than ${MAX_MERGE_VALUE_DEPTH}`)
}

const hasField = (node: JsonObject, key: string): boolean => Object.hasOwn(node, key) && node[key] !== undefined

/** `current + delta` as the engine computes it: exact 64-bit integers, else floats; undefined where it fails. */
function addTo (current: unknown, delta: number): number | undefined {
  if (typeof current !== 'number') return undefined
  const exact = Number.isInteger(current) ? BigInt(current) : null
  if (exact !== null && exact >= I64_MIN && exact <= U64_MAX) {
    const sum = exact + BigInt(delta)
    return sum < I64_MIN || sum > U64_MAX ? undefined : Number(sum)
  }
  const sum = current + delta
  return Number.isFinite(sum) ? sum : undefined
}

/** A fresh value for an append to null or a missing first-level field: a string stays a string. */
const initialAppend = (value: unknown): unknown => typeof value === 'string' ? value : [value]

/** Appends `value` to an existing `target` (array push, string concatenation, null starts it), or fails. */
function appended (target: unknown, value: unknown, label: string): unknown {
  if (Array.isArray(target)) {
    target.push(value)
    return target
  }
  if (typeof target === 'string') {
    if (typeof value === 'string') return target + value
    throw new OpFailure('append.type_mismatch', `"${label}" is a string: only a string can be appended, not ${typeName(value)}`)
  }
  if (target === null || target === undefined) return initialAppend(value)
  throw new OpFailure('append.type_mismatch', `"${label}" is ${typeName(target)}: expected an array, a string, null or a missing field`)
}

/**
 * The working value of one update. `missing`: the item did not exist and no op has applied yet; it then reads
 * as `{}`, except that a root increment, decrement or append starts from nothing (the engine's missing default).
 */
class Working {
  constructor (public value: unknown, public missing: boolean) {}

  /** The root as an object, for ops on a first-level field. */
  object (op: string, label: string): JsonObject {
    if (!isPlainObject(this.value)) throw new OpFailure(`${op}.target_not_object`, `cannot ${op} at "${label}": the item is ${typeName(this.value)}, not an object`)
    return this.value
  }

  /** Walks `segments` from the root, making the root and every step that is not an object a fresh `{}`. */
  walkOrCreate (segments: string[]): JsonObject {
    if (!isPlainObject(this.value)) this.value = {}
    let node = this.value as JsonObject
    for (const key of segments) {
      const next = Object.hasOwn(node, key) ? node[key] : undefined
      if (isPlainObject(next)) {
        node = next
      } else {
        const created: JsonObject = {}
        node[key] = created
        node = created
      }
    }
    return node
  }

  apply (op: UpdateOp): void {
    switch (op.type) {
      case 'set': {
        const value = op.value === undefined ? null : structuredClone(op.value)
        checkPath('set', segmentsOf(op.path))
        if (op.path === '') this.value = value
        else this.object('set', op.path)[op.path] = value
        return
      }
      case 'merge': {
        const segments = segmentsOf(op.path)
        checkPath('merge', segments)
        checkMergeValue(op.value)
        // A root merge into a value that is not an object is a silent no-op in the engine: no error either.
        if (segments.length === 0 && !isPlainObject(this.value)) return
        Object.assign(this.walkOrCreate(segments), structuredClone(op.value))
        return
      }
      case 'increment':
      case 'decrement': {
        checkPath(op.type, segmentsOf(op.path))
        const delta = op.type === 'increment' ? op.by : 0 - op.by
        const notNumber = (found: unknown): OpFailure =>
          new OpFailure(`${op.type}.not_number`, `cannot ${op.type} "${op.path === '' ? 'root' : op.path}": it is ${typeName(found)}, not a number`)
        if (op.path === '') {
          const result = this.missing ? delta : addTo(this.value, delta)
          if (result === undefined) throw notNumber(this.value)
          this.value = result
          return
        }
        const target = this.object(op.type, op.path)
        if (!hasField(target, op.path)) {
          target[op.path] = delta
          return
        }
        const result = addTo(target[op.path], delta)
        if (result === undefined) throw notNumber(target[op.path])
        target[op.path] = result
        return
      }
      case 'append': {
        const segments = segmentsOf(op.path)
        checkPath('append', segments)
        const value = structuredClone(op.value)
        if (segments.length === 0) {
          this.value = appended(this.missing ? null : this.value, value, 'root')
          return
        }
        const label = segments.length === 1 ? segments[0] as string : `[${segments.join(', ')}]`
        this.object('append', label)
        const leaf = segments[segments.length - 1] as string
        const parent = this.walkOrCreate(segments.slice(0, -1))
        if (hasField(parent, leaf)) parent[leaf] = appended(parent[leaf], value, leaf)
        // A missing first-level field starts as the engine's initial value; a missing nested leaf is always an array.
        else parent[leaf] = segments.length === 1 ? initialAppend(value) : [value]
        return
      }
      case 'remove': {
        checkPath('remove', segmentsOf(op.path))
        if (op.path === '') this.value = null
        else delete this.object('remove', op.path)[op.path]
      }
    }
  }
}

/**
 * Applies `ops` in order to a deep copy of `current`. `exists` says whether the item is stored (a stored JSON
 * `null` is a value); by default `null` and `undefined` mean a missing item, which starts from `{}`.
 * Throws InvalidArgumentError, before anything applies, when an op is malformed.
 */
export function applyUpdateOps (
  current: unknown,
  ops: UpdateOp[],
  exists = current !== null && current !== undefined
): { value: unknown, errors: UpdateOpError[] } {
  checkUpdateOps(ops)
  const working = new Working(exists ? structuredClone(current ?? null) : {}, !exists)
  const errors: UpdateOpError[] = []
  ops.forEach((op, index) => {
    try {
      // Every op checks all it needs before it changes anything, so a failed op leaves no trace.
      working.apply(op)
      working.missing = false
    } catch (err) {
      if (!(err instanceof OpFailure)) throw err
      errors.push({ op_index: index, code: err.code, message: err.message, doc_url: UPDATE_OP_DOC_URL })
    }
  })
  return { value: working.value, errors }
}
