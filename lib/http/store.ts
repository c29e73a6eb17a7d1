// Durable streams storage: the contract every backend implements, the offset format, and the protocol's
// rules for create and append as pure functions, so each backend applies them inside its own atomic step.
import {
  ProducerFencedError, ProducerSeqGapError, StreamClosedError, StreamConflictError, StreamRequestError, StreamSeqError
} from '../errors.js'

/** A stream's position: bytes for byte streams, messages for JSON streams. */
export type Position = number

export interface ProducerClaim { id: string, epoch: number, seq: number }
export interface ProducerState { epoch: number, seq: number }

/** What a PUT asks for; `fork` names the source stream by its store name. */
export interface CreateRequest {
  contentType: string | null
  ttlSeconds: number | null
  expiresAt: number | null
  closed: boolean
  body: Buffer
  fork: { source: string, offset: Position | null, subOffset: number } | null
}

/** What a POST asks for. An empty body with `close` only closes. */
export interface AppendRequest {
  contentType: string | null
  body: Buffer
  close: boolean
  streamSeq: string | null
  producer: ProducerClaim | null
}

/** What HEAD and every response describe. */
export interface StreamInfo {
  /** Changes with every incarnation of a name (ETags of a recreated stream never match the old one's). */
  id: string
  contentType: string
  tail: Position
  closed: boolean
  ttlSeconds: number | null
  expiresAt: number | null
}

export interface CreateResult { created: boolean, info: StreamInfo }

export interface AppendResult {
  info: StreamInfo
  /** 'appended': new data or a close took effect; 'duplicate': a producer retry already applied. */
  outcome: 'appended' | 'duplicate'
  producer: ProducerState | null
}

/** A read's payload: bytes for byte streams, one JSON text per message for JSON streams. */
export type Payload = { kind: 'bytes', bytes: Buffer } | { kind: 'json', messages: string[] }

export interface ReadResult {
  info: StreamInfo
  from: Position
  next: Position
  payload: Payload
}

/**
 * Where durable streams live. Names are the URL path under the protocol prefix. Every method applies the
 * protocol's rules atomically per stream and rejects with the coded errors of lib/errors.ts.
 */
export interface DurableStreamStore {
  create (name: string, request: CreateRequest): Promise<CreateResult>
  append (name: string, request: AppendRequest): Promise<AppendResult>
  /** Metadata without renewing a sliding TTL. */
  head (name: string): Promise<StreamInfo>
  /** Reads from `from` (null: the tail) at most `maxBytes` (at least one message); renews a sliding TTL. */
  read (name: string, from: Position | null, maxBytes: number): Promise<ReadResult>
  delete (name: string): Promise<void>
  /** Calls `listener` after every append, close or delete of `name`; returns the unsubscribe function. */
  watch (name: string, listener: () => void): () => void
  close (): Promise<void>
}

export const START_OFFSET = '0000000000000000_0000000000000000'
const OFFSET_PATTERN = /^(\d{16})_(\d{16})$/

/** Offsets are fixed-width decimal, so they sort lexicographically in position order. */
export function formatOffset (position: Position): string {
  return `0000000000000000_${String(position).padStart(16, '0')}`
}

/** A position from an offset token, '-1' meaning the start; null for a malformed token. */
export function parseOffset (token: string): Position | null {
  if (token === '-1') return 0
  const match = OFFSET_PATTERN.exec(token)
  if (match === null) return null
  const position = Number(match[2])
  return Number.isSafeInteger(position) ? position : null
}

/** The media type alone, lower-cased: `Application/JSON; charset=utf-8` is `application/json`. */
export function mediaType (contentType: string): string {
  return contentType.split(';', 1)[0].trim().toLowerCase()
}

export function isJsonType (contentType: string): boolean {
  return mediaType(contentType) === 'application/json'
}

/**
 * The texts of a JSON array's elements, cut from `text` itself (already checked to be valid JSON): cheaper than
 * serialising every parsed element again.
 */
function arrayElements (text: string): string[] {
  const elements: string[] = []
  let depth = 0
  let start = 0
  for (let index = 0; index < text.length; index++) {
    const code = text.charCodeAt(index)
    if (code === 0x22) {
      // A string: skip to its closing quote, past escaped characters.
      for (index++; text.charCodeAt(index) !== 0x22; index++) if (text.charCodeAt(index) === 0x5c) index++
    } else if (code === 0x5b || code === 0x7b) {
      if (depth++ === 0) start = index + 1
    } else if (code === 0x5d || code === 0x7d) {
      if (--depth === 0) {
        const last = text.slice(start, index).trim()
        if (last !== '') elements.push(last)
        break
      }
    } else if (code === 0x2c && depth === 1) {
      elements.push(text.slice(start, index).trim())
      start = index + 1
    }
  }
  return elements
}

/**
 * A JSON body as messages (one JSON text each, on one line): an array is one level of messages, anything else
 * one message. `allowEmpty` admits `[]` (a PUT creating an empty stream).
 */
export function jsonMessages (body: Buffer, allowEmpty: boolean): string[] {
  if (body.length === 0) return []
  const text = body.toString('utf8')
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    throw new StreamRequestError('the body is not valid JSON')
  }
  const array: unknown[] | null = Array.isArray(value) ? value : null
  if (array !== null && array.length === 0 && !allowEmpty) throw new StreamRequestError('an empty JSON array appends nothing')
  // Line breaks between tokens would split an SSE data line: such a body is serialised again, on one line each.
  if (/[\r\n]/.test(text)) return (array ?? [value]).map(item => JSON.stringify(item) ?? 'null')
  return array !== null ? arrayElements(text) : [text.trim()]
}

/** The state the append rules need, as a backend holds it. */
export interface AppendState {
  contentType: string
  closed: boolean
  closedBy: ProducerClaim | null
  lastStreamSeq: string | null
  tail: Position
  producer: ProducerState | null
}

/** What a backend must do after the rules accepted an append. */
export type AppendDecision =
  | { kind: 'duplicate', producer: ProducerState, closed: boolean }
  | { kind: 'apply', payload: Payload | null, close: boolean, producer: ProducerState | null }

/**
 * The protocol's append rules in its order of precedence: producer fencing and duplicates, then closure,
 * then content type, then Stream-Seq and producer gaps, then the body. Throws the coded refusal.
 */
export function decideAppend (state: AppendState, request: AppendRequest): AppendDecision {
  const claim = request.producer
  let expectedSeq = 0
  if (claim !== null) {
    const known = state.producer
    if (known !== null && claim.epoch < known.epoch) {
      throw Object.assign(new ProducerFencedError(claim.epoch, known.epoch), { headers: { 'producer-epoch': String(known.epoch) } })
    }
    if (known !== null && claim.epoch === known.epoch && claim.seq <= known.seq) {
      return { kind: 'duplicate', producer: known, closed: state.closed }
    }
    if (known !== null && claim.epoch > known.epoch && claim.seq !== 0) {
      throw new StreamRequestError('a new producer epoch starts at Producer-Seq 0')
    }
    if (known !== null && claim.epoch === known.epoch) expectedSeq = known.seq + 1
  }
  const hasBody = request.body.length > 0
  const producer = claim === null ? null : { epoch: claim.epoch, seq: claim.seq }
  if (state.closed) {
    // Closing a closed stream again is a no-op; appending to it is refused.
    if (!hasBody && request.close && claim === null) return { kind: 'apply', payload: null, close: false, producer }
    throw Object.assign(new StreamClosedError(), { headers: { 'stream-closed': 'true', 'stream-next-offset': formatOffset(state.tail) } })
  }
  if (hasBody) {
    if (request.contentType === null) throw new StreamRequestError('Content-Type is required with a body')
    if (mediaType(request.contentType) !== mediaType(state.contentType)) {
      throw new StreamConflictError(`content type ${mediaType(request.contentType)} does not match the stream's ${mediaType(state.contentType)}`)
    }
  }
  if (request.streamSeq !== null && state.lastStreamSeq !== null && request.streamSeq <= state.lastStreamSeq) {
    throw new StreamSeqError(request.streamSeq, state.lastStreamSeq)
  }
  if (claim !== null && claim.seq !== expectedSeq) {
    throw Object.assign(new ProducerSeqGapError(claim.seq, expectedSeq), {
      headers: { 'producer-expected-seq': String(expectedSeq), 'producer-received-seq': String(claim.seq) }
    })
  }
  if (!hasBody) return { kind: 'apply', payload: null, close: request.close, producer }
  const payload: Payload = isJsonType(state.contentType)
    ? { kind: 'json', messages: jsonMessages(request.body, false) }
    : { kind: 'bytes', bytes: request.body }
  return { kind: 'apply', payload, close: request.close, producer }
}

/** The configuration a PUT compares for idempotence. */
export interface StreamConfig {
  contentType: string
  ttlSeconds: number | null
  expiresAt: number | null
  fork: { source: string, offset: Position, subOffset: number } | null
}

/** 409 unless an existing stream's configuration matches the request's (a repeated PUT is then a no-op). */
export function checkSameConfig (existing: StreamConfig, request: CreateRequest, requestedFork: StreamConfig['fork']): void {
  const sameType = request.contentType === null || mediaType(request.contentType) === mediaType(existing.contentType)
  const sameExpiry = (request.ttlSeconds === null && request.expiresAt === null) ||
    (request.ttlSeconds === existing.ttlSeconds && request.expiresAt === existing.expiresAt)
  const a = existing.fork
  const b = requestedFork
  const sameFork = (a === null && b === null) ||
    (a !== null && b !== null && a.source === b.source && a.offset === b.offset && a.subOffset === b.subOffset)
  if (!sameType || !sameExpiry || !sameFork) throw new StreamConflictError('the stream exists with another configuration')
}

/** The sliding or absolute expiry time of a stream in epoch ms, or null when it never expires. */
export function expiryTime (config: { ttlSeconds: number | null, expiresAt: number | null }, touchedAt: number): number | null {
  if (config.expiresAt !== null) return config.expiresAt
  if (config.ttlSeconds !== null) return touchedAt + config.ttlSeconds * 1000
  return null
}
