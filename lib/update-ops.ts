// The engine's atomic update operations, applied to a copy of a stored value.
// Per-op failures are reported and skipped, never thrown: the other ops still apply.

export type Path = string | string[]

export type UpdateOp =
  | { type: 'set', path: string, value: unknown }
  | { type: 'merge', path?: Path, value: Record<string, unknown> }
  | { type: 'increment', path: string, by: number }
  | { type: 'decrement', path: string, by: number }
  | { type: 'append', path?: Path, value: unknown }
  | { type: 'remove', path: string }

export interface UpdateOpError {
  op_index: number
  code: string
  message: string
}

export const MAX_PATH_DEPTH = 32
export const MAX_SEGMENT_BYTES = 256
export const MAX_MERGE_DEPTH = 16
export const MAX_MERGE_KEYS = 1024
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype'])

type JsonObject = Record<string, unknown>

class OpFailure extends Error {
  constructor (readonly code: string, message: string) { super(message) }
}

export function isPlainObject (value: unknown): value is JsonObject {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false
  const proto = Object.getPrototypeOf(value)
  return proto === Object.prototype || proto === null
}

function segments (op: string, path: Path | undefined): string[] {
  if (path === undefined || path === '') return []
  const list = Array.isArray(path) ? path : [path]
  if (list.length > MAX_PATH_DEPTH) throw new OpFailure(`${op}.path.too_deep`, `path deeper than ${MAX_PATH_DEPTH}`)
  for (const segment of list) {
    if (typeof segment !== 'string') throw new OpFailure(`${op}.path.invalid`, 'path segments must be strings')
    if (Buffer.byteLength(segment) > MAX_SEGMENT_BYTES) throw new OpFailure(`${op}.path.segment_too_long`, `path segment over ${MAX_SEGMENT_BYTES} bytes`)
    if (FORBIDDEN_KEYS.has(segment)) throw new OpFailure(`${op}.path.proto_polluted`, `path segment "${segment}" is not allowed`)
  }
  return list
}

function topLevelKey (op: string, path: unknown): string {
  if (typeof path !== 'string') throw new OpFailure(`${op}.path.invalid`, 'path must be a string')
  const [key] = segments(op, path)
  if (key === undefined) throw new OpFailure(`${op}.path.invalid`, 'path must not be empty')
  return key
}

function rootObject (op: string, root: unknown): JsonObject {
  if (!isPlainObject(root)) throw new OpFailure(`${op}.target_not_object`, 'the item is not an object')
  return root
}

function checkMergeValue (value: unknown, depth = 1, keys = { count: 0 }): void {
  if (depth > MAX_MERGE_DEPTH) throw new OpFailure('merge.value.too_deep', `merge value deeper than ${MAX_MERGE_DEPTH}`)
  if (Array.isArray(value)) {
    for (const entry of value) checkMergeValue(entry, depth + 1, keys)
    return
  }
  if (value === null || typeof value !== 'object') return
  for (const key of Object.keys(value)) {
    if (FORBIDDEN_KEYS.has(key)) throw new OpFailure('merge.value.proto_polluted', `key "${key}" is not allowed`)
    if (++keys.count > MAX_MERGE_KEYS) throw new OpFailure('merge.value.too_many_keys', `merge value over ${MAX_MERGE_KEYS} keys`)
    checkMergeValue((value as JsonObject)[key], depth + 1, keys)
  }
}

/** Walks `path` from `root`, creating objects where missing; fails where a non-object is in the way. */
function descend (op: string, root: JsonObject, path: string[]): JsonObject {
  let node = root
  for (const key of path) {
    const next = Object.hasOwn(node, key) ? node[key] : undefined
    if (next === undefined || next === null) {
      const created: JsonObject = {}
      node[key] = created
      node = created
    } else if (isPlainObject(next)) {
      node = next
    } else {
      throw new OpFailure(`${op}.target_not_object`, `"${key}" is not an object`)
    }
  }
  return node
}

function checkNumber (op: string, by: unknown): number {
  if (typeof by !== 'number' || !Number.isFinite(by)) throw new OpFailure(`${op}.by.not_number`, '"by" must be a finite number')
  return by
}

function applyOne (root: unknown, op: UpdateOp): unknown {
  if (!isPlainObject(op)) throw new OpFailure('op.invalid', 'an op must be an object')
  switch (op.type) {
    case 'set': {
      if (op.path === '') return structuredClone(op.value)
      const key = topLevelKey('set', op.path)
      rootObject('set', root)[key] = structuredClone(op.value)
      return root
    }
    case 'merge': {
      if (!isPlainObject(op.value)) throw new OpFailure('merge.value.not_an_object', 'merge value must be an object')
      checkMergeValue(op.value)
      const path = segments('merge', op.path)
      const base = path.length === 0 && !isPlainObject(root) ? {} : root
      Object.assign(descend('merge', rootObject('merge', base), path), structuredClone(op.value))
      return base
    }
    case 'increment':
    case 'decrement': {
      const by = checkNumber(op.type, op.by)
      const key = topLevelKey(op.type, op.path)
      const target = rootObject(op.type, root)
      const current = Object.hasOwn(target, key) ? target[key] : undefined
      if (current !== undefined && current !== null && typeof current !== 'number') throw new OpFailure(`${op.type}.not_number`, `"${key}" is not a number`)
      const sign = op.type === 'increment' ? 1 : -1
      target[key] = (typeof current === 'number' ? current : 0) + sign * by
      return root
    }
    case 'append': {
      const path = segments('append', op.path)
      const last = path.pop()
      if (last === undefined) {
        if (Array.isArray(root)) return [...root, structuredClone(op.value)]
        if (typeof root === 'string' && typeof op.value === 'string') return root + op.value
        throw new OpFailure('append.target_not_appendable', 'the item is not an array or a string')
      }
      const parent = descend('append', rootObject('append', root), path)
      const current = Object.hasOwn(parent, last) ? parent[last] : undefined
      if (current === undefined || current === null) parent[last] = [structuredClone(op.value)]
      else if (Array.isArray(current)) current.push(structuredClone(op.value))
      else if (typeof current === 'string' && typeof op.value === 'string') parent[last] = current + op.value
      else throw new OpFailure('append.target_not_appendable', `"${last}" is not an array or a string`)
      return root
    }
    case 'remove': {
      const key = topLevelKey('remove', op.path)
      delete rootObject('remove', root)[key]
      return root
    }
    default:
      throw new OpFailure('op.unknown_type', `unknown op type "${String((op as { type?: unknown }).type)}"`)
  }
}

/**
 * Applies `ops` in order to a deep copy of `current` (a missing item starts from `{}`).
 * The stored value is never touched; a failing op leaves the working value as it was before that op.
 */
export function applyUpdateOps (current: unknown, ops: UpdateOp[]): { value: unknown, errors: UpdateOpError[] } {
  let value: unknown = current === null || current === undefined ? {} : structuredClone(current)
  const errors: UpdateOpError[] = []
  ops.forEach((op, index) => {
    const before = structuredClone(value)
    try {
      value = applyOne(value, op)
    } catch (err) {
      if (!(err instanceof OpFailure)) throw err
      value = before
      errors.push({ op_index: index, code: err.code, message: err.message })
    }
  })
  return { value, errors }
}
