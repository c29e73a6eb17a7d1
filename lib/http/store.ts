// Durable streams storage: the contract every backend implements, the offset format, and the protocol's
// rules for create and append as pure functions, so each backend applies them inside its own atomic step.
import { isUtf8 } from 'node:buffer'
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

/**
 * JSON messages: `count` JSON texts in UTF-8, one per line of `lines` (a message never holds a line break). One
 * buffer for any number of messages: a batch of a thousand is one block outside the JavaScript heap, which the
 * garbage collector neither copies nor scans, and the very bytes a storage backend writes and reads.
 */
export interface JsonPayload { kind: 'json', lines: Buffer, count: number }

/** What ends each JSON message but the last in `lines`. */
export const LINE_BREAK = 0x0a
const LINE_BREAK_BYTES = Buffer.from([LINE_BREAK])
const NO_LINES = Buffer.alloc(0)

/** No JSON messages. */
export const EMPTY_JSON: JsonPayload = Object.freeze({ kind: 'json', lines: NO_LINES, count: 0 })

/** A read's payload: bytes for byte streams, JSON messages for JSON streams. */
export type Payload = { kind: 'bytes', bytes: Buffer } | JsonPayload

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

const OFFSET_PATTERN = /^(\d{16})_(\d{16})$/

export const START_OFFSET = '0000000000000000_0000000000000000'

/** Offsets are fixed-width decimal, so they sort lexicographically in position order. */
export function formatOffset (position: Position): string {
  const digits = String(position)
  // The zeros in front are a slice of the start offset (every response carries an offset: no padding loop).
  return START_OFFSET.slice(0, START_OFFSET.length - digits.length) + digits
}

/** A position from an offset token, '-1' meaning the start; null for a malformed token. */
export function parseOffset (token: string): Position | null {
  if (token === '-1') return 0
  const match = OFFSET_PATTERN.exec(token)
  if (match === null) return null
  const position = Number(match[2])
  return Number.isSafeInteger(position) ? position : null
}

/**
 * `compute` remembered for up to `max` keys (clients choose the keys: past `max`, new ones are computed each time).
 * A key whose computation throws is not remembered.
 */
export function boundedMemo<V> (compute: (key: string) => V, max: number): (key: string) => V {
  const known = new Map<string, V>()
  return (key) => {
    let value = known.get(key)
    if (value === undefined) {
      value = compute(key)
      if (known.size < max) known.set(key, value)
    }
    return value
  }
}

/** A map that keeps the `max` keys set last: setting one more forgets the one set longest ago. */
export class RecentMap<V> {
  private readonly entries = new Map<string, V>()

  constructor (private readonly max: number) {}

  get (key: string): V | undefined {
    return this.entries.get(key)
  }

  set (key: string, value: V): void {
    // Oldest first in the map's order: a key set again moves to the end.
    this.entries.delete(key)
    this.entries.set(key, value)
    if (this.entries.size > this.max) this.entries.delete(this.entries.keys().next().value!)
  }

  delete (key: string): void {
    this.entries.delete(key)
  }
}

/** Content types remembered: every append compares two, and a few types cover most streams. */
const MAX_MEDIA_TYPES = 256

/** The media type alone, lower-cased: `Application/JSON; charset=utf-8` is `application/json`. */
export const mediaType = boundedMemo((contentType) => contentType.split(';', 1)[0].trim().toLowerCase(), MAX_MEDIA_TYPES)

export function isJsonType (contentType: string): boolean {
  return mediaType(contentType) === 'application/json'
}

/** Nesting the scanner below follows; deeper bodies take JSON.parse's path. */
const MAX_SCAN_DEPTH = 64

// The scanner reads the body's bytes, not a decoded text: no string of the whole body to build and collect. It runs
// on valid UTF-8 only, where every byte of a multi-byte character is 0x80 or above: such bytes can only be a
// string's content, never a quote, a backslash or a control character.

function isDigit (code: number): boolean {
  return code >= 0x30 && code <= 0x39
}

function isHexDigit (code: number): boolean {
  return isDigit(code) || (code >= 0x41 && code <= 0x46) || (code >= 0x61 && code <= 0x66)
}

/** What may follow a backslash in a JSON string (`u` aside, checked with its four hex digits). */
function isEscapable (code: number): boolean {
  return code === 0x22 || code === 0x5c || code === 0x2f || code === 0x62 || code === 0x66 || code === 0x6e || code === 0x72 || code === 0x74
}

/** Past the spaces and tabs at `index` (a line break is not skipped: such bodies take JSON.parse's path). */
function skipSpaces (bytes: Buffer, index: number): number {
  let code = bytes[index]
  while (code === 0x20 || code === 0x09) code = bytes[++index]
  return index
}

/** Past the JSON string opening at `index`; -1 if it is not one. */
function stringEnd (bytes: Buffer, index: number): number {
  for (index++; index < bytes.length; index++) {
    const code = bytes[index]
    if (code === 0x22) return index + 1
    if (code < 0x20) return -1
    if (code === 0x5c) {
      const escaped = bytes[++index]
      if (escaped === 0x75) {
        for (let k = 0; k < 4; k++) if (!isHexDigit(bytes[++index])) return -1
      } else if (!isEscapable(escaped)) {
        return -1
      }
    }
  }
  return -1
}

/** Past the JSON number starting at `index`; -1 if it is not one. */
function numberEnd (bytes: Buffer, index: number): number {
  if (bytes[index] === 0x2d) index++
  let code = bytes[index]
  if (code === 0x30) code = bytes[++index]
  else if (code >= 0x31 && code <= 0x39) while (isDigit(code)) code = bytes[++index]
  else return -1
  if (code === 0x2e) {
    const digits = ++index
    while (isDigit(bytes[index])) index++
    if (index === digits) return -1
    code = bytes[index]
  }
  if (code === 0x65 || code === 0x45) {
    code = bytes[++index]
    if (code === 0x2b || code === 0x2d) index++
    const digits = index
    while (isDigit(bytes[index])) index++
    if (index === digits) return -1
  }
  return index
}

/** Whether `word` (ASCII) is at `index`. */
function wordAt (bytes: Buffer, index: number, word: string): boolean {
  for (let k = 0; k < word.length; k++) if (bytes[index + k] !== word.charCodeAt(k)) return false
  return true
}

/** Past the JSON value starting at `index` (spaces skipped inside it, not around it); -1 if there is none. */
function valueEnd (bytes: Buffer, index: number, depth: number): number {
  const code = bytes[index]
  if (code === 0x22) return stringEnd(bytes, index)
  if (code === 0x7b || code === 0x5b) {
    if (depth === MAX_SCAN_DEPTH) return -1
    const object = code === 0x7b
    const close = object ? 0x7d : 0x5d
    index = skipSpaces(bytes, index + 1)
    if (bytes[index] === close) return index + 1
    for (;;) {
      if (object) {
        if (bytes[index] !== 0x22) return -1
        index = stringEnd(bytes, index)
        if (index < 0) return -1
        index = skipSpaces(bytes, index)
        if (bytes[index] !== 0x3a) return -1
        index = skipSpaces(bytes, index + 1)
      }
      index = valueEnd(bytes, index, depth + 1)
      if (index < 0) return -1
      index = skipSpaces(bytes, index)
      const next = bytes[index]
      if (next === close) return index + 1
      if (next !== 0x2c) return -1
      index = skipSpaces(bytes, index + 1)
    }
  }
  if (code === 0x74) return wordAt(bytes, index, 'true') ? index + 4 : -1
  if (code === 0x6e) return wordAt(bytes, index, 'null') ? index + 4 : -1
  if (code === 0x66) return wordAt(bytes, index, 'false') ? index + 5 : -1
  return numberEnd(bytes, index)
}

/** Where the messages of a scanned body lie in its bytes: message `i` is [starts[i], ends[i]). */
interface MessageSpans { starts: number[], ends: number[] }

/**
 * The messages of a JSON body on one line, found in the body itself (cheaper than parsing it and serialising every
 * element again): a top-level array's elements, or the whole value. Null when the scanner does not accept the body:
 * not JSON, a line break, deeper than MAX_SCAN_DEPTH. It accepts only valid JSON; JSON.parse decides the rest.
 * `bytes` must be valid UTF-8.
 */
function scanMessages (bytes: Buffer): MessageSpans | null {
  let index = skipSpaces(bytes, 0)
  const spans: MessageSpans = { starts: [], ends: [] }
  if (bytes[index] === 0x5b) {
    index = skipSpaces(bytes, index + 1)
    if (bytes[index] === 0x5d) index++
    else {
      for (;;) {
        spans.starts.push(index)
        index = valueEnd(bytes, index, 1)
        if (index < 0) return null
        spans.ends.push(index)
        index = skipSpaces(bytes, index)
        const next = bytes[index]
        index = skipSpaces(bytes, index + 1)
        if (next === 0x5d) break
        if (next !== 0x2c) return null
      }
    }
  } else {
    spans.starts.push(index)
    index = valueEnd(bytes, index, 0)
    if (index < 0) return null
    spans.ends.push(index)
    index = skipSpaces(bytes, index)
  }
  return index === bytes.length ? spans : null
}

/**
 * The scanned messages one per line, in one copy. Messages that only a comma separates are copied out at once,
 * each comma turned into a line break.
 */
function spannedLines (body: Buffer, { starts, ends }: MessageSpans): Buffer {
  const count = starts.length
  let size = count - 1
  for (let i = 0; i < count; i++) size += ends[i] - starts[i]
  // Not zeroed first: every byte is copied over.
  const lines = Buffer.allocUnsafe(size)
  const first = starts[0]
  if (size === ends[count - 1] - first) {
    body.copy(lines, 0, first, ends[count - 1])
    for (let i = 0; i < count - 1; i++) lines[ends[i] - first] = LINE_BREAK
    return lines
  }
  let at = 0
  for (let i = 0; i < count; i++) {
    if (i > 0) lines[at++] = LINE_BREAK
    at += body.copy(lines, at, starts[i], ends[i])
  }
  return lines
}

/**
 * A JSON body as messages, one JSON text each on one line: an array is one level of messages, anything else
 * one message. `allowEmpty` admits `[]` (a PUT creating an empty stream).
 */
export function jsonPayload (body: Buffer, allowEmpty: boolean): JsonPayload {
  if (body.length === 0) return EMPTY_JSON
  // A body that is not UTF-8 is decoded as every text is (U+FFFD for each bad sequence) and its messages written
  // again: what is kept is always UTF-8.
  const spans = isUtf8(body) ? scanMessages(body) : null
  let payload: JsonPayload
  if (spans !== null) payload = spans.starts.length === 0 ? EMPTY_JSON : { kind: 'json', lines: spannedLines(body, spans), count: spans.starts.length }
  else {
    let value: unknown
    try {
      value = JSON.parse(body.toString('utf8'))
    } catch {
      throw new StreamRequestError('the body is not valid JSON')
    }
    // Line breaks between tokens would split an SSE data line: each message is serialised again, on one line.
    const messages = (Array.isArray(value) ? value : [value]).map(item => JSON.stringify(item) ?? 'null')
    payload = { kind: 'json', lines: Buffer.from(messages.join('\n')), count: messages.length }
  }
  if (payload.count === 0 && !allowEmpty) throw new StreamRequestError('an empty JSON array appends nothing')
  return payload
}

/** The bytes of a JSON payload's messages, line breaks aside: what read budgets count. */
export function messageBytes (payload: JsonPayload): number {
  return payload.count === 0 ? 0 : payload.lines.length - payload.count + 1
}

/** JSON lines one after another (parts of payloads, each ending on a whole message). */
export function joinLines (parts: Buffer[]): Buffer {
  if (parts.length <= 1) return parts[0] ?? NO_LINES
  const pieces: Buffer[] = []
  for (const part of parts) pieces.push(part, LINE_BREAK_BYTES)
  pieces.pop()
  return Buffer.concat(pieces)
}

/** JSON messages as an array, in UTF-8: the body of a JSON read. */
export function jsonArray (payload: JsonPayload): Buffer {
  const { lines } = payload
  const array = Buffer.allocUnsafe(lines.length + 2)
  array[0] = 0x5b
  lines.copy(array, 1)
  array[array.length - 1] = 0x5d
  // A line break never occurs inside a UTF-8 sequence: each one found is a message's end.
  for (let at = lines.indexOf(LINE_BREAK); at >= 0; at = lines.indexOf(LINE_BREAK, at + 1)) array[at + 1] = 0x2c
  return array
}

/** The state the append rules need, as a backend holds it. */
export interface AppendState {
  contentType: string
  closed: boolean
  closedBy: ProducerClaim | null
  lastStreamSeq: string | null
  tail: Position
}

/** What a backend must do after the rules accepted an append. */
export type AppendDecision =
  | { kind: 'duplicate', producer: ProducerState, closed: boolean }
  | { kind: 'apply', payload: Payload | null, close: boolean, producer: ProducerState | null }

/**
 * The protocol's append rules in its order of precedence: closure (a closed stream answers only a repeat of the
 * request that closed it, and a plain close again), then content type, then the producer (fencing, a new epoch's
 * first seq, duplicates, gaps), then Stream-Seq (of a body), then the body. `known`: the claiming producer's
 * state in the stream. Throws the coded refusal.
 */
export function decideAppend (state: AppendState, known: ProducerState | null, request: AppendRequest): AppendDecision {
  const claim = request.producer
  const hasBody = request.body.length > 0
  if (state.closed) {
    const closer = state.closedBy
    if (claim !== null && closer !== null && closer.id === claim.id && closer.epoch === claim.epoch && closer.seq === claim.seq) {
      return { kind: 'duplicate', producer: known ?? { epoch: claim.epoch, seq: claim.seq }, closed: true }
    }
    // Closing a closed stream again is a no-op; appending to it is refused.
    if (!hasBody && request.close && claim === null) return { kind: 'apply', payload: null, close: false, producer: null }
    throw Object.assign(new StreamClosedError(), { headers: { 'stream-closed': 'true', 'stream-next-offset': formatOffset(state.tail) } })
  }
  if (hasBody) {
    if (request.contentType === null) throw new StreamRequestError('Content-Type is required with a body')
    if (mediaType(request.contentType) !== mediaType(state.contentType)) {
      throw new StreamConflictError(`content type ${mediaType(request.contentType)} does not match the stream's ${mediaType(state.contentType)}`)
    }
  }
  let producer: ProducerState | null = null
  if (claim !== null) {
    if (known !== null && claim.epoch < known.epoch) {
      throw Object.assign(new ProducerFencedError(claim.epoch, known.epoch), { headers: { 'producer-epoch': String(known.epoch) } })
    }
    if (known !== null && claim.epoch > known.epoch && claim.seq !== 0) {
      throw new StreamRequestError('a new producer epoch starts at Producer-Seq 0')
    }
    const sameEpoch = known !== null && claim.epoch === known.epoch
    if (sameEpoch && claim.seq <= known.seq) return { kind: 'duplicate', producer: known, closed: false }
    const expectedSeq = sameEpoch ? known.seq + 1 : 0
    if (claim.seq !== expectedSeq) {
      throw Object.assign(new ProducerSeqGapError(claim.seq, expectedSeq), {
        headers: { 'producer-expected-seq': String(expectedSeq), 'producer-received-seq': String(claim.seq) }
      })
    }
    producer = { epoch: claim.epoch, seq: claim.seq }
  }
  // Stream-Seq orders appended data: a close without a body neither checks nor records it.
  if (hasBody && request.streamSeq !== null && state.lastStreamSeq !== null && request.streamSeq <= state.lastStreamSeq) {
    throw new StreamSeqError(request.streamSeq, state.lastStreamSeq)
  }
  if (!hasBody) return { kind: 'apply', payload: null, close: request.close, producer }
  const payload: Payload = isJsonType(state.contentType)
    ? jsonPayload(request.body, false)
    : { kind: 'bytes', bytes: request.body }
  return { kind: 'apply', payload, close: request.close, producer }
}

/** The content type of a stream created without one (a fork's is its source's). */
export const DEFAULT_CONTENT_TYPE = 'application/octet-stream'

/** The configuration a PUT compares for idempotence. */
export interface StreamConfig {
  contentType: string
  ttlSeconds: number | null
  expiresAt: number | null
  fork: { source: string, offset: Position, subOffset: number } | null
  closed: boolean
}

/**
 * 409 unless an existing stream's configuration matches the request's (a repeated PUT is then a no-op). Whether
 * the stream is closed counts too: a PUT without `Stream-Closed: true` does not ensure a closed stream, nor one
 * with it an open stream. A PUT without a content type asks for the default one, and one without Stream-TTL or
 * Stream-Expires-At for no expiry; a fork's PUT without them asks for what it inherits, which matches. A fork
 * matches its source and sub-offset, and its offset when the request gives one (the stored offset includes the
 * sub-offset); the source itself is not looked at, so a retried PUT of a fork still answers 200 after its source
 * grew or was deleted.
 */
export function checkSameConfig (existing: StreamConfig, request: CreateRequest): void {
  const inherits = request.fork !== null
  const contentType = request.contentType ?? (inherits ? existing.contentType : DEFAULT_CONTENT_TYPE)
  const sameType = mediaType(contentType) === mediaType(existing.contentType)
  const sameExpiry = (inherits && request.ttlSeconds === null && request.expiresAt === null) ||
    (request.ttlSeconds === existing.ttlSeconds && request.expiresAt === existing.expiresAt)
  const a = existing.fork
  const b = request.fork
  const sameFork = (a === null && b === null) ||
    (a !== null && b !== null && a.source === b.source && a.subOffset === b.subOffset && (b.offset === null || a.offset === b.offset + b.subOffset))
  if (!sameType || !sameExpiry || !sameFork || request.closed !== existing.closed) throw new StreamConflictError('the stream exists with another configuration')
}

/** The sliding or absolute expiry time of a stream in epoch ms, or null when it never expires. */
export function expiryTime (config: { ttlSeconds: number | null, expiresAt: number | null }, touchedAt: number): number | null {
  if (config.expiresAt !== null) return config.expiresAt
  if (config.ttlSeconds !== null) return touchedAt + config.ttlSeconds * 1000
  return null
}
