// Checks on values before they are stored or sent: bounded nesting and size, so that no stored value can later
// overflow the stack of a reader (JSON.stringify, structuredClone, a client's JSON.parse) or stall the server.
import { InvalidArgumentError } from './errors.js'
import type { LimitOptions } from './options.js'

/**
 * The deepest nesting any value may have and still be served. JSON.stringify (a reply, a sync frame, a feed
 * message) overflows the stack near 2 000 levels; `max_value_depth` may not exceed this, and a stored value deeper
 * than it (written by an engine or an older version) is skipped by reads instead.
 */
export const MAX_SERVABLE_VALUE_DEPTH = 512

/**
 * Throws STREAMS_ERR_INVALID_ARGUMENT when `value` nests deeper than `maxValueDepth` or serialises to more than
 * `maxValueBytes`. The walk is iterative: a hostile value cannot overflow the stack while being checked.
 */
export function checkValue (what: string, value: unknown, limits: Pick<LimitOptions, 'maxValueDepth' | 'maxValueBytes'>): void {
  const stack: Array<[unknown, number]> = [[value, 0]]
  while (stack.length > 0) {
    const [node, depth] = stack.pop()!
    if (node === null || typeof node !== 'object') continue
    if (depth >= limits.maxValueDepth) throw new InvalidArgumentError(`${what} nests deeper than ${limits.maxValueDepth} levels`)
    for (const child of Array.isArray(node) ? node : Object.values(node)) {
      if (child !== null && typeof child === 'object') stack.push([child, depth + 1])
    }
  }
  // Depth is bounded now, so serialising is safe; strings count in UTF-8 bytes, as they go on the wire.
  const text = JSON.stringify(value)
  if (text !== undefined && Buffer.byteLength(text) > limits.maxValueBytes) {
    throw new InvalidArgumentError(`${what} is larger than ${limits.maxValueBytes} bytes`)
  }
}
