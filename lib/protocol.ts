// The wire protocol: client frames in (parsed and checked), server envelopes out (serialised once).
// Envelope field order is the engine's: type, timestamp, streamName, groupId, id, event; `rev` is ours
// and the stock clients ignore it, as they ignore `offset` (the group feed's offset after the event, with feeds on).
import type { StreamEvent } from './adapters/adapter.js'
import { InvalidNameError } from './errors.js'

export interface Subscription {
  subscriptionId: string
  streamName: string
  groupId: string
  id: string | null
}

export type ClientMessage = { type: 'join' | 'leave', sub: Subscription }

/**
 * What a client frame is: a join or leave; nothing (an empty frame); garbage, with the reason; or a well-formed
 * join or leave whose names are strings the plugin refuses (empty, too long, reserved, ':' in a stream name),
 * with the subscription as sent, so the client can be answered in that subscription's room.
 */
export type ParseResult =
  | { kind: 'message', message: ClientMessage }
  | { kind: 'empty' }
  | { kind: 'invalid', reason: string }
  | { kind: 'refused-name', message: ClientMessage, reason: string }

const FORBIDDEN_NAMES = new Set(['__proto__', 'constructor', 'prototype'])

/**
 * A lone surrogate has no UTF-8 form: Redis, SQLite and the wire would each store it as U+FFFD, so two names
 * differing only there would become one.
 */
export function isWellFormed (value: string): boolean {
  return (value as string & { isWellFormed(): boolean }).isWellFormed()
}

/** Why `value` is not a usable stream, group or item name, or null when it is. */
function nameProblem (kind: 'stream' | 'group' | 'item', value: unknown, maxLength: number): string | null {
  if (typeof value !== 'string') return `${kind} name must be a string`
  if (value.length === 0) return `${kind} name must not be empty`
  if (value.length > maxLength) return `${kind} name longer than ${maxLength} characters`
  if (FORBIDDEN_NAMES.has(value)) return `${kind} name "${value}" is reserved`
  if (!isWellFormed(value)) return `${kind} name holds a lone surrogate (ill-formed UTF-16)`
  // Stream names end at the first ':' in the shared Redis key layout `stream:{stream}:{group}`.
  if (kind === 'stream' && value.includes(':')) return 'stream name must not contain ":"'
  return null
}

export function checkName (kind: 'stream' | 'group' | 'item', value: unknown, maxLength: number): string {
  const problem = nameProblem(kind, value, maxLength)
  if (problem !== null) throw new InvalidNameError(`${kind} name`, problem)
  return value as string
}

/**
 * Parses one client frame. Empty frames are ignored, like the engine does; anything that is not a join/leave
 * with string names is refused with a reason.
 */
export function parseClientFrame (raw: string, maxNameLength: number): ParseResult {
  if (raw.trim() === '') return { kind: 'empty' }
  let frame: unknown
  try {
    frame = JSON.parse(raw)
  } catch {
    return { kind: 'invalid', reason: 'not JSON' }
  }
  if (frame === null || typeof frame !== 'object' || Array.isArray(frame)) return { kind: 'invalid', reason: 'not an object' }
  const { type, data } = frame as { type?: unknown, data?: unknown }
  if (type !== 'join' && type !== 'leave') return { kind: 'invalid', reason: 'unknown message type' }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) return { kind: 'invalid', reason: 'data must be an object' }
  const { subscriptionId, streamName, groupId, id } = data as Record<string, unknown>
  if (typeof subscriptionId !== 'string' || subscriptionId === '' || subscriptionId.length > maxNameLength || !isWellFormed(subscriptionId)) return { kind: 'invalid', reason: 'bad subscriptionId' }
  const problem = nameProblem('stream', streamName, maxNameLength) ??
    nameProblem('group', groupId, maxNameLength) ??
    (id === undefined || id === null ? null : nameProblem('item', id, maxNameLength))
  const sub = { subscriptionId, streamName: streamName as string, groupId: groupId as string, id: (id ?? null) as string | null }
  if (problem === null) return { kind: 'message', message: { type, sub } }
  const named = typeof streamName === 'string' && typeof groupId === 'string' && (id === undefined || id === null || typeof id === 'string')
  return named ? { kind: 'refused-name', message: { type, sub }, reason: problem } : { kind: 'invalid', reason: problem }
}

function head (timestamp: number, stream: string, group: string, id: string | null): string {
  return `{"type":"stream","timestamp":${timestamp},"streamName":${JSON.stringify(stream)},"groupId":${JSON.stringify(group)},"id":${id === null ? 'null' : JSON.stringify(id)}`
}

/** The one serialisation of a change or custom event, shared by every socket that receives it. */
export function eventEnvelope (event: StreamEvent, offset?: string): string {
  const tail = offset === undefined ? '' : `,"offset":"${offset}"`
  return `${head(event.timestamp, event.stream, event.group, event.id)},"event":${JSON.stringify(event.event)},"rev":${event.rev}${tail}}`
}

/** The reply to a join: the group's items (array) or the item's value (or null). */
export function syncEnvelope (sub: Subscription, timestamp: number, rev: number, data: unknown): string {
  return `${head(timestamp, sub.streamName, sub.groupId, sub.id)},"event":{"type":"sync","data":${JSON.stringify(data ?? null)}},"rev":${rev}}`
}

/** The engine's answer to a refused join; stock clients ignore it, other clients can show it. */
export function unauthorizedEnvelope (sub: Subscription, timestamp: number): string {
  return `${head(timestamp, sub.streamName, sub.groupId, sub.id)},"event":{"type":"unauthorized"}}`
}

/** A custom `error` event to one subscription's room (reachable with `subscription.onEvent('error', …)`). */
export function errorEnvelope (sub: Subscription, timestamp: number, code: string, message: string): string {
  return `${head(timestamp, sub.streamName, sub.groupId, sub.id)},"event":{"type":"event","event":{"type":"error","data":${JSON.stringify({ code, message })}}}}`
}

/**
 * One complete unmasked WebSocket text frame (RFC 6455 §5.2) for `payload`. Built once per event and written
 * as is to every socket that receives it, instead of re-framing the same bytes per socket.
 */
export function textFrame (payload: string): Buffer {
  const length = Buffer.byteLength(payload)
  const headerLength = length < 126 ? 2 : length < 65536 ? 4 : 10
  const frame = Buffer.allocUnsafe(headerLength + length)
  frame[0] = 0x81 // FIN + text opcode
  if (length < 126) {
    frame[1] = length
  } else if (length < 65536) {
    frame[1] = 126
    frame.writeUInt16BE(length, 2)
  } else {
    frame[1] = 127
    frame.writeUInt32BE(Math.floor(length / 2 ** 32), 2)
    frame.writeUInt32BE(length >>> 0, 6)
  }
  frame.write(payload, headerLength, 'utf8')
  return frame
}
