// Update ops case by case against the iii engine (engine/src/update_ops.rs and its tests): each row is the
// engine's result for that stored value and those ops, so an engine and this plugin sharing one store write
// the same value. Rows named `engine:` restate a test of the engine; the others follow from reading its code.
import t from 'tap'
import {
  applyUpdateOps, checkUpdateOps, MAX_MERGE_VALUE_DEPTH, MAX_MERGE_VALUE_KEYS, MAX_PATH_DEPTH, MAX_SEGMENT_BYTES,
  UPDATE_OP_DOC_URL, type UpdateOp
} from '../lib/update-ops.js'

/** The item is not stored (the engine's `None`); any other `before` is a stored value, JSON `null` included. */
const MISSING = Symbol('missing item')

interface Row {
  name: string
  before: unknown
  ops: unknown[]
  after: unknown
  /** `[op_index, code]` of every reported error, in order; none when absent. */
  errors?: Array<[number, string]>
}

const SINKS = ['__proto__', 'constructor', 'prototype']
const I64_MIN = -(2 ** 63)

/** `{ n: { n: … {} } }` nested `depth` levels deep, as the engine counts depth (an object is one level). */
function nested (depth: number): unknown {
  let value: unknown = {}
  for (let level = 1; level < depth; level++) value = { n: value }
  return value
}

const keys = (count: number): Record<string, number> => Object.fromEntries(Array.from({ length: count }, (_, i) => [`k${i}`, i]))
const segments = (count: number): string[] => Array.from({ length: count }, (_, i) => `k${i}`)
const deepObject = (path: string[], leaf: unknown): unknown => path.reduceRight<unknown>((inner, key) => ({ [key]: inner }), leaf)

const rows: Row[] = [
  // set
  { name: 'set a field', before: { a: 1 }, ops: [{ type: 'set', path: 'b', value: { c: [1] } }], after: { a: 1, b: { c: [1] } } },
  { name: 'set without a value stores null', before: {}, ops: [{ type: 'set', path: 'a' }], after: { a: null } },
  { name: 'engine: set with an empty path replaces the root, even with no value', before: { '': 'empty-field', keep: true }, ops: [{ type: 'set', path: '' }], after: null },
  { name: 'set on a missing item starts from {}', before: MISSING, ops: [{ type: 'set', path: 'a', value: 1 }], after: { a: 1 } },
  { name: 'set a field of a non-object root', before: 'leaf', ops: [{ type: 'set', path: 'a', value: 1 }], after: 'leaf', errors: [[0, 'set.target_not_object']] },
  { name: 'set a field of a stored null', before: null, ops: [{ type: 'set', path: 'a', value: 1 }], after: null, errors: [[0, 'set.target_not_object']] },
  { name: 'a dotted set path is one literal key', before: { a: { b: 1 } }, ops: [{ type: 'set', path: 'a.b', value: 2 }], after: { a: { b: 1 }, 'a.b': 2 } },

  // merge
  { name: 'engine: root merge with no path, "" and []', before: { a: 1 }, ops: [{ type: 'merge', value: { b: 2 } }, { type: 'merge', path: '', value: { c: 3 } }, { type: 'merge', path: [], value: { d: 4 } }, { type: 'merge', path: null, value: { e: 5 } }], after: { a: 1, b: 2, c: 3, d: 4, e: 5 } },
  { name: 'a root merge is shallow', before: { m: { x: 1, y: 2 } }, ops: [{ type: 'merge', value: { m: { x: 3 } } }], after: { m: { x: 3 } } },
  { name: 'root merge on a missing item', before: MISSING, ops: [{ type: 'merge', value: { a: 1 } }], after: { a: 1 } },
  { name: 'engine: root merge over a non-object root is a silent no-op', before: 'leaf', ops: [{ type: 'merge', value: { a: 1 } }], after: 'leaf' },
  { name: 'root merge over an array root is a silent no-op', before: [1, 2], ops: [{ type: 'merge', value: { a: 1 } }], after: [1, 2] },
  { name: 'root merge over a stored null is a silent no-op', before: null, ops: [{ type: 'merge', value: { a: 1 } }], after: null },
  { name: 'a merge at a path replaces a non-object root with {}', before: 'leaf', ops: [{ type: 'merge', path: 'a', value: { x: 1 } }], after: { a: { x: 1 } } },
  { name: 'a nested merge replaces an array root', before: [1, 2], ops: [{ type: 'merge', path: ['a', 'b'], value: { x: 1 } }], after: { a: { b: { x: 1 } } } },
  { name: 'a merge at a path over a stored null', before: null, ops: [{ type: 'merge', path: ['a'], value: { x: 1 } }], after: { a: { x: 1 } } },
  { name: 'engine: merge into an existing first-level field', before: { 'session-1': { ts1: 'a' } }, ops: [{ type: 'merge', path: 'session-1', value: { ts2: 'b' } }], after: { 'session-1': { ts1: 'a', ts2: 'b' } } },
  { name: 'engine: merge into a missing first-level field creates it', before: {}, ops: [{ type: 'merge', path: 'session-1', value: { author: 'alice' } }], after: { 'session-1': { author: 'alice' } } },
  { name: 'engine: a nested merge replaces a non-object intermediate', before: { sessions: { abc: 'garbage' } }, ops: [{ type: 'merge', path: ['sessions', 'abc'], value: { author: 'alice' } }], after: { sessions: { abc: { author: 'alice' } } } },
  { name: 'a nested merge replaces null, number and array intermediates', before: { a: null, b: 5, c: [1] }, ops: [{ type: 'merge', path: ['a', 'x'], value: { v: 1 } }, { type: 'merge', path: ['b', 'x'], value: { v: 2 } }, { type: 'merge', path: ['c'], value: { v: 3 } }], after: { a: { x: { v: 1 } }, b: { x: { v: 2 } }, c: { v: 3 } } },
  { name: 'engine: a nested merge creates missing intermediates', before: {}, ops: [{ type: 'merge', path: ['a', 'b', 'c'], value: { x: 1 } }], after: { a: { b: { c: { x: 1 } } } } },
  { name: 'engine: a nested merge overwrites keys shallowly', before: { sessions: { abc: { author: 'old', topic: 'preserved' } } }, ops: [{ type: 'merge', path: ['sessions', 'abc'], value: { author: 'new' } }], after: { sessions: { abc: { author: 'new', topic: 'preserved' } } } },
  { name: 'engine: a single string path equals a one-segment array', before: {}, ops: [{ type: 'merge', path: 'foo', value: { x: 1 } }, { type: 'merge', path: ['foo'], value: { y: 2 } }], after: { foo: { x: 1, y: 2 } } },
  { name: 'engine: a dotted segment is one literal key', before: { a: { b: { preserved: true } } }, ops: [{ type: 'merge', path: ['a.b'], value: { x: 1 } }], after: { a: { b: { preserved: true } }, 'a.b': { x: 1 } } },
  { name: 'engine: a merge value that is not an object', before: { a: 1 }, ops: [{ type: 'merge', path: 'foo', value: 'not-an-object' }], after: { a: 1 }, errors: [[0, 'merge.value.not_an_object']] },
  { name: 'merge values: array and null are not objects', before: { a: 1 }, ops: [{ type: 'merge', value: [1] }, { type: 'merge', value: null }], after: { a: 1 }, errors: [[0, 'merge.value.not_an_object'], [1, 'merge.value.not_an_object']] },
  { name: 'engine: an empty path segment', before: {}, ops: [{ type: 'merge', path: ['a', ''], value: { x: 1 } }], after: {}, errors: [[0, 'merge.path.empty_segment']] },
  { name: 'a path of one empty segment is not the root', before: { a: 1 }, ops: [{ type: 'merge', path: [''], value: { x: 1 } }], after: { a: 1 }, errors: [[0, 'merge.path.empty_segment']] },
  { name: 'engine: a path over the depth limit', before: {}, ops: [{ type: 'merge', path: segments(MAX_PATH_DEPTH + 1), value: { x: 1 } }], after: {}, errors: [[0, 'merge.path.too_deep']] },
  { name: 'a path at the depth limit', before: {}, ops: [{ type: 'merge', path: segments(MAX_PATH_DEPTH), value: { x: 1 } }], after: deepObject(segments(MAX_PATH_DEPTH), { x: 1 }) },
  { name: 'engine: an oversized segment', before: {}, ops: [{ type: 'merge', path: ['a'.repeat(MAX_SEGMENT_BYTES + 1)], value: { x: 1 } }], after: {}, errors: [[0, 'merge.path.segment_too_long']] },
  { name: 'segment length counts UTF-8 bytes', before: {}, ops: [{ type: 'merge', path: ['é'.repeat(MAX_SEGMENT_BYTES / 2 + 1)], value: { x: 1 } }], after: {}, errors: [[0, 'merge.path.segment_too_long']] },
  { name: 'a segment at the byte limit', before: {}, ops: [{ type: 'merge', path: ['a'.repeat(MAX_SEGMENT_BYTES)], value: { x: 1 } }], after: { ['a'.repeat(MAX_SEGMENT_BYTES)]: { x: 1 } } },
  { name: 'engine: every prototype name as a merge path segment', before: {}, ops: SINKS.map(sink => ({ type: 'merge', path: ['safe', sink], value: { x: 1 } })), after: {}, errors: SINKS.map((_, i) => [i, 'merge.path.proto_polluted']) },
  { name: 'engine: a prototype name as a top-level merge value key', before: {}, ops: SINKS.map(sink => ({ type: 'merge', path: 'foo', value: JSON.parse(`{"${sink}":{"polluted":true}}`) })), after: {}, errors: SINKS.map((_, i) => [i, 'merge.value.proto_polluted']) },
  { name: 'engine: a merge value over the depth limit', before: {}, ops: [{ type: 'merge', path: 'foo', value: nested(MAX_MERGE_VALUE_DEPTH + 1) }], after: {}, errors: [[0, 'merge.value.too_deep']] },
  { name: 'a merge value at the depth limit; arrays count as levels', before: {}, ops: [{ type: 'merge', value: nested(MAX_MERGE_VALUE_DEPTH) }, { type: 'merge', value: { l: [[[nested(MAX_MERGE_VALUE_DEPTH - 3)]]] } }], after: nested(MAX_MERGE_VALUE_DEPTH), errors: [[1, 'merge.value.too_deep']] },
  { name: 'a merge value over the top-level key limit', before: {}, ops: [{ type: 'merge', value: keys(MAX_MERGE_VALUE_KEYS + 1) }], after: {}, errors: [[0, 'merge.value.too_many_keys']] },
  { name: 'the key limit counts top-level keys only', before: {}, ops: [{ type: 'merge', value: keys(MAX_MERGE_VALUE_KEYS) }, { type: 'merge', value: { many: keys(MAX_MERGE_VALUE_KEYS + 1) } }], after: { ...keys(MAX_MERGE_VALUE_KEYS), many: keys(MAX_MERGE_VALUE_KEYS + 1) } },

  // increment and decrement
  { name: 'engine: increment an existing number and a missing field', before: { count: 2 }, ops: [{ type: 'increment', path: 'count', by: 3 }, { type: 'increment', path: 'missing', by: 3 }], after: { count: 5, missing: 3 } },
  { name: 'engine: increment a field that is not a number', before: { count: 2, bad: 'value' }, ops: [{ type: 'increment', path: 'count', by: 3 }, { type: 'increment', path: 'bad', by: 3 }, { type: 'increment', path: 'missing', by: 3 }], after: { count: 5, bad: 'value', missing: 3 }, errors: [[1, 'increment.not_number']] },
  { name: 'engine: decrement an existing number and a missing field', before: { count: 5 }, ops: [{ type: 'decrement', path: 'count', by: 3 }, { type: 'decrement', path: 'missing', by: 3 }], after: { count: 2, missing: -3 } },
  { name: 'engine: decrement a field that is not a number', before: { count: 5, bad: 'value' }, ops: [{ type: 'decrement', path: 'count', by: 3 }, { type: 'decrement', path: 'bad', by: 3 }, { type: 'decrement', path: 'missing', by: 3 }], after: { count: 2, bad: 'value', missing: -3 }, errors: [[1, 'decrement.not_number']] },
  { name: 'engine: numeric ops in order', before: { count: 10 }, ops: [{ type: 'increment', path: 'count', by: 5 }, { type: 'decrement', path: 'count', by: 3 }], after: { count: 12 } },
  { name: 'engine: numeric ops on a float field', before: { count: 1.5 }, ops: [{ type: 'increment', path: 'count', by: 2 }, { type: 'decrement', path: 'count', by: 1 }], after: { count: 2.5 } },
  { name: 'engine: a null field is not a missing one', before: { inc: null, dec: null }, ops: [{ type: 'increment', path: 'inc', by: 1 }, { type: 'decrement', path: 'dec', by: 1 }], after: { inc: null, dec: null }, errors: [[0, 'increment.not_number'], [1, 'decrement.not_number']] },
  { name: 'engine: by 0 still checks the type', before: { bad: 'value', count: 2 }, ops: [{ type: 'increment', path: 'bad', by: 0 }, { type: 'decrement', path: 'count', by: 0 }], after: { bad: 'value', count: 2 }, errors: [[0, 'increment.not_number']] },
  { name: 'negative by', before: { n: 1 }, ops: [{ type: 'increment', path: 'n', by: -3 }, { type: 'decrement', path: 'm', by: -2 }], after: { n: -2, m: 2 } },
  { name: 'engine: a missing field decremented by the smallest i64', before: {}, ops: [{ type: 'decrement', path: 'count', by: I64_MIN }], after: { count: 2 ** 63 } },
  { name: 'below the smallest i64 an integer cannot go', before: { n: I64_MIN }, ops: [{ type: 'decrement', path: 'n', by: 1 }, { type: 'increment', path: 'n', by: 2048 }], after: { n: I64_MIN + 2048 }, errors: [[0, 'decrement.not_number']] },
  { name: 'engine: numeric ops at the root of a number', before: 2, ops: [{ type: 'increment', path: '', by: 3 }, { type: 'decrement', path: '', by: 1 }], after: 4 },
  { name: 'increment at the root of a missing item starts from nothing', before: MISSING, ops: [{ type: 'increment', path: '', by: 5 }], after: 5 },
  { name: 'decrement at the root of a missing item', before: MISSING, ops: [{ type: 'decrement', path: '', by: 5 }, { type: 'decrement', path: '', by: 1 }], after: -6 },
  { name: 'a failed op keeps the missing default for the next', before: MISSING, ops: [{ type: 'set', path: '__proto__', value: 1 }, { type: 'increment', path: '', by: 2 }], after: 2, errors: [[0, 'set.path.proto_polluted']] },
  { name: 'once an op applied, the root is no longer missing', before: MISSING, ops: [{ type: 'remove', path: 'x' }, { type: 'increment', path: '', by: 2 }], after: {}, errors: [[1, 'increment.not_number']] },
  { name: 'increment at the root of an object', before: { a: 1 }, ops: [{ type: 'increment', path: '', by: 1 }], after: { a: 1 }, errors: [[0, 'increment.not_number']] },
  { name: 'increment at the root of a stored null', before: null, ops: [{ type: 'increment', path: '', by: 1 }, { type: 'decrement', path: '', by: 1 }], after: null, errors: [[0, 'increment.not_number'], [1, 'decrement.not_number']] },
  { name: 'increment a field of a non-object root', before: [1], ops: [{ type: 'increment', path: 'n', by: 1 }, { type: 'decrement', path: 'n', by: 1 }], after: [1], errors: [[0, 'increment.target_not_object'], [1, 'decrement.target_not_object']] },

  // append
  { name: 'engine: append to an array field pushes one element', before: { events: [{ kind: 'start' }] }, ops: [{ type: 'append', path: 'events', value: { kind: 'chunk' } }], after: { events: [{ kind: 'start' }, { kind: 'chunk' }] } },
  { name: 'engine: an array value is one element', before: { events: [] }, ops: [{ type: 'append', path: 'events', value: ['nested', 'array'] }], after: { events: [['nested', 'array']] } },
  { name: 'engine: appends in order', before: { events: [] }, ops: [{ type: 'append', path: 'events', value: 'first' }, { type: 'append', path: 'events', value: 'second' }], after: { events: ['first', 'second'] } },
  { name: 'engine: concatenate a string field', before: { transcript: 'hello' }, ops: [{ type: 'append', path: 'transcript', value: ' world' }], after: { transcript: 'hello world' } },
  { name: 'engine: a missing field starts by value kind (a string stays "s", not ["s"])', before: {}, ops: [{ type: 'append', path: 'transcript', value: 'hello' }, { type: 'append', path: 'events', value: { kind: 'chunk' } }], after: { transcript: 'hello', events: [{ kind: 'chunk' }] } },
  { name: 'a missing field of a missing item', before: MISSING, ops: [{ type: 'append', path: 'log', value: 's' }, { type: 'append', path: 'log', value: 't' }], after: { log: 'st' } },
  { name: 'engine: a null field starts by value kind', before: { string: null, array: null }, ops: [{ type: 'append', path: 'string', value: 'chunk' }, { type: 'append', path: 'array', value: { kind: 'chunk' } }], after: { string: 'chunk', array: [{ kind: 'chunk' }] } },
  { name: 'engine: a non-string onto a string field', before: { transcript: 'hello' }, ops: [{ type: 'append', path: 'transcript', value: { not: 'string' } }], after: { transcript: 'hello' }, errors: [[0, 'append.type_mismatch']] },
  { name: 'engine: onto an object field', before: { events: {} }, ops: [{ type: 'append', path: 'events', value: 'chunk' }], after: { events: {} }, errors: [[0, 'append.type_mismatch']] },
  { name: 'onto a number or boolean field', before: { n: 1, b: true }, ops: [{ type: 'append', path: 'n', value: 1 }, { type: 'append', path: 'b', value: 'x' }], after: { n: 1, b: true }, errors: [[0, 'append.type_mismatch'], [1, 'append.type_mismatch']] },
  { name: 'engine: at the root of a missing item, by value kind', before: MISSING, ops: [{ type: 'append', path: '', value: 'hello' }], after: 'hello' },
  { name: 'engine: at the root of a missing item, a non-string', before: MISSING, ops: [{ type: 'append', value: { kind: 'chunk' } }], after: [{ kind: 'chunk' }] },
  { name: 'at the root of a missing item, twice', before: MISSING, ops: [{ type: 'append', path: [], value: 'a' }, { type: 'append', path: null, value: 'b' }], after: 'ab' },
  { name: 'at the root of an array', before: [1], ops: [{ type: 'append', value: 2 }], after: [1, 2] },
  { name: 'at the root of a string', before: 'ab', ops: [{ type: 'append', value: 'c' }, { type: 'append', value: 1 }], after: 'abc', errors: [[1, 'append.type_mismatch']] },
  { name: 'at the root of a stored null', before: null, ops: [{ type: 'append', value: 1 }], after: [1] },
  { name: 'at the root of an object', before: { a: 1 }, ops: [{ type: 'append', value: 1 }], after: { a: 1 }, errors: [[0, 'append.type_mismatch']] },
  { name: 'engine: a dotted field is one literal key', before: { 'user.name': ['A'], user: { name: ['B'] } }, ops: [{ type: 'append', path: 'user.name', value: 'C' }], after: { 'user.name': ['A', 'C'], user: { name: ['B'] } } },
  { name: 'engine: a nested path pushes onto an existing array', before: { entityId: { buffer: ['a'] } }, ops: [{ type: 'append', path: ['entityId', 'buffer'], value: 'b' }], after: { entityId: { buffer: ['a', 'b'] } } },
  { name: 'engine: a nested path creates intermediates', before: {}, ops: [{ type: 'append', path: ['entityId', 'buffer'], value: 'a' }], after: { entityId: { buffer: ['a'] } } },
  { name: 'engine: a missing nested leaf is always an array; a one-segment path keeps the string', before: { entityId: {} }, ops: [{ type: 'append', path: ['entityId', 'buffer'], value: 'x' }, { type: 'append', path: ['buffer'], value: 'x' }], after: { entityId: { buffer: ['x'] }, buffer: 'x' } },
  { name: 'a nested path replaces a non-object intermediate', before: { a: 'text' }, ops: [{ type: 'append', path: ['a', 'b'], value: 1 }], after: { a: { b: [1] } } },
  { name: 'a nested null leaf starts by value kind', before: { a: { s: null } }, ops: [{ type: 'append', path: ['a', 's'], value: 'x' }], after: { a: { s: 'x' } } },
  { name: 'engine: a nested object leaf', before: { entityId: { buffer: { x: 'y' } } }, ops: [{ type: 'append', path: ['entityId', 'buffer'], value: 'z' }], after: { entityId: { buffer: { x: 'y' } } }, errors: [[0, 'append.type_mismatch']] },
  { name: 'engine: a path under a non-object root', before: [1, 2, 3], ops: [{ type: 'append', path: ['a', 'b'], value: 'x' }, { type: 'append', path: 'a', value: 'x' }], after: [1, 2, 3], errors: [[0, 'append.target_not_object'], [1, 'append.target_not_object']] },
  { name: 'a field of a stored null', before: null, ops: [{ type: 'append', path: 'a', value: 'x' }], after: null, errors: [[0, 'append.target_not_object']] },
  { name: 'engine: a prototype name at the root, an intermediate, the leaf', before: { safe: {} }, ops: [{ type: 'append', path: ['__proto__'], value: 'x' }, { type: 'append', path: ['a', 'constructor', 'b'], value: 'x' }, { type: 'append', path: ['safe', 'prototype'], value: 'x' }], after: { safe: {} }, errors: [[0, 'append.path.proto_polluted'], [1, 'append.path.proto_polluted'], [2, 'append.path.proto_polluted']] },
  { name: 'engine: an oversized append segment', before: {}, ops: [{ type: 'append', path: 'a'.repeat(MAX_SEGMENT_BYTES + 1), value: 'x' }], after: {}, errors: [[0, 'append.path.segment_too_long']] },
  { name: 'append path limits: empty segment, depth', before: {}, ops: [{ type: 'append', path: ['a', ''], value: 1 }, { type: 'append', path: segments(MAX_PATH_DEPTH + 1), value: 1 }], after: {}, errors: [[0, 'append.path.empty_segment'], [1, 'append.path.too_deep']] },

  // remove
  { name: 'remove a field; a missing one is fine', before: { a: 1, b: 2 }, ops: [{ type: 'remove', path: 'a' }, { type: 'remove', path: 'zz' }], after: { b: 2 } },
  { name: 'engine: remove with an empty path clears the root', before: { '': 'empty-field', keep: true }, ops: [{ type: 'remove', path: '' }], after: null },
  { name: 'remove a field of a non-object root', before: 5, ops: [{ type: 'remove', path: 'a' }], after: 5, errors: [[0, 'remove.target_not_object']] },
  { name: 'remove at the root of a missing item', before: MISSING, ops: [{ type: 'remove', path: '' }], after: null },

  // several ops
  { name: 'no ops on a missing item', before: MISSING, ops: [], after: {} },
  { name: 'engine: failed ops are skipped, the others apply, indexes kept', before: { bad: 'value', events: {} }, ops: [{ type: 'increment', path: 'bad', by: 1 }, { type: 'set', path: '__proto__', value: true }, { type: 'append', path: 'events', value: 'chunk' }, { type: 'set', path: 'ok', value: true }], after: { bad: 'value', events: {}, ok: true }, errors: [[0, 'increment.not_number'], [1, 'set.path.proto_polluted'], [2, 'append.type_mismatch']] },
  { name: 'engine: a failure between two successes', before: { buffer: [] }, ops: [{ type: 'append', path: 'buffer', value: 'first' }, { type: 'append', path: ['__proto__', 'polluted'], value: true }, { type: 'append', path: 'buffer', value: 'third' }], after: { buffer: ['first', 'third'] }, errors: [[1, 'append.path.proto_polluted']] },
  { name: 'set the root then work on it', before: MISSING, ops: [{ type: 'set', path: '', value: [] }, { type: 'append', value: 1 }, { type: 'set', path: '', value: { n: 1 } }, { type: 'increment', path: 'n', by: 1 }], after: { n: 2 } }
]

// engine: every prototype name as the path of every non-merge op
for (const sink of SINKS) {
  rows.push({
    name: `engine: "${sink}" as the path of set, append, increment, decrement, remove`,
    before: {},
    ops: [{ type: 'set', path: sink, value: true }, { type: 'append', path: sink, value: 'chunk' }, { type: 'increment', path: sink, by: 1 }, { type: 'decrement', path: sink, by: 1 }, { type: 'remove', path: sink }],
    after: {},
    errors: [[0, 'set.path.proto_polluted'], [1, 'append.path.proto_polluted'], [2, 'increment.path.proto_polluted'], [3, 'decrement.path.proto_polluted'], [4, 'remove.path.proto_polluted']]
  })
}
rows.push({
  name: 'field path limits apply to set, increment, decrement, remove',
  before: {},
  ops: ['set', 'increment', 'decrement', 'remove'].map(type => ({ type, path: 'x'.repeat(MAX_SEGMENT_BYTES + 1), value: 1, by: 1 })),
  after: {},
  errors: [[0, 'set.path.segment_too_long'], [1, 'increment.path.segment_too_long'], [2, 'decrement.path.segment_too_long'], [3, 'remove.path.segment_too_long']]
})

t.test('each case gives the engine\'s value and errors', async t => {
  for (const row of rows) {
    const before = row.before === MISSING ? undefined : structuredClone(row.before)
    const { value, errors } = applyUpdateOps(before, row.ops as UpdateOp[], row.before !== MISSING)
    t.same(value, row.after, `${row.name}: value`)
    t.same(errors.map(error => [error.op_index, error.code]), row.errors ?? [], `${row.name}: errors`)
    if (row.before !== MISSING) t.same(before, row.before, `${row.name}: the stored value is not touched`)
  }
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype untouched')
})

t.test('every error has a message and the engine\'s doc_url', async t => {
  const { errors } = applyUpdateOps({ s: 'x' }, [{ type: 'append', path: 's', value: 1 }, { type: 'merge', path: ['a', ''], value: {} }])
  t.equal(errors.length, 2)
  for (const error of errors) {
    t.equal(error.doc_url, UPDATE_OP_DOC_URL)
    t.equal(error.doc_url, 'https://iii.dev/docs/workers/iii-state#error-codes')
    t.ok(typeof error.message === 'string' && error.message.length > 0)
  }
})

t.test('values are copied in and out', async t => {
  const list = ['a']
  const merged = { deep: { x: 1 } }
  const { value } = applyUpdateOps({}, [{ type: 'set', path: 'list', value: list }, { type: 'merge', value: merged }, { type: 'append', path: 'list', value: 'b' }])
  t.same(value, { list: ['a', 'b'], deep: { x: 1 } })
  t.same(list, ['a'], 'the set value is not the stored one')
  ;(value as { deep: { x: number } }).deep.x = 2
  t.same(merged, { deep: { x: 1 } }, 'the merge value is not the stored one')
})

t.test('without `exists`, null and undefined both mean a missing item (as adapters that cannot tell pass them)', async t => {
  t.same(applyUpdateOps(null, [{ type: 'increment', path: '', by: 1 }]).value, 1)
  t.same(applyUpdateOps(undefined, [{ type: 'set', path: 'a', value: 1 }]).value, { a: 1 })
  t.same(applyUpdateOps(null, [{ type: 'set', path: 'a', value: 1 }], true).errors.map(error => error.code), ['set.target_not_object'], 'a stored null when told')
})

t.test('a malformed op refuses the whole call, as the engine\'s deserializer does', async t => {
  const malformed: unknown[] = [
    'set',
    null,
    [],
    {},
    { type: 'nope', path: 'a' },
    { type: 'SET', path: 'a', value: 1 },
    { type: 'set', value: 1 },
    { type: 'set', path: 1, value: 1 },
    { type: 'remove' },
    { type: 'increment', path: 'n' },
    { type: 'increment', path: 'n', by: '1' },
    { type: 'increment', path: 'n', by: 1.5 },
    { type: 'decrement', path: 'n', by: Number.NaN },
    { type: 'decrement', path: 'n', by: 2 ** 64 },
    { type: 'increment', path: ['n'], by: 1 },
    { type: 'merge', path: 'a' },
    { type: 'merge', path: ['a', 1], value: {} },
    { type: 'merge', path: 5, value: {} },
    { type: 'append', path: 'a' },
    { type: 'append', path: { a: 1 }, value: 1 }
  ]
  for (const op of malformed) {
    const ops = [{ type: 'set', path: 'first', value: 1 }, op] as UpdateOp[]
    t.throws(() => applyUpdateOps({}, ops), { code: 'STREAMS_ERR_INVALID_ARGUMENT' }, JSON.stringify(op) ?? String(op))
    t.throws(() => { checkUpdateOps(ops) }, { code: 'STREAMS_ERR_INVALID_ARGUMENT' })
  }
  t.throws(() => { checkUpdateOps({ type: 'set', path: 'a' }) }, { code: 'STREAMS_ERR_INVALID_ARGUMENT' }, 'ops not an array')
  t.doesNotThrow(() => {
    checkUpdateOps([
      { type: 'set', path: 'a' },
      { type: 'merge', path: null, value: 1 },
      { type: 'append', value: null },
      { type: 'increment', path: '', by: -(2 ** 63), extra: 'ignored' }
    ])
  }, 'absent set value, null path, any value kind, unknown members: all accepted')
})
