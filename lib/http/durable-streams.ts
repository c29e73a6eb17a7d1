// The Durable Streams protocol over HTTP (PROTOCOL.md of durable-streams/durable-streams): create, append,
// close, read (catch-up, long-poll, SSE), HEAD, DELETE and forks at `${path}/<name>`, every request
// authenticated like the socket's and optionally authorized per operation. Storage is a DurableStreamStore.
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest, FastifyError } from 'fastify'
import type { DurableStreamsSettings } from '../options.js'
import type { SocketAuth } from '../auth.js'
import type { StreamAdapter } from '../adapters/adapter.js'
import type { Registry } from '../registry.js'
import {
  ForbiddenError, InvalidOptionError, PayloadTooLargeError, StreamRequestError
} from '../errors.js'
import { LiveReaders, SharedReads, SseChunks, SseWriter, endOfTurn, nextCursor, sseControl, sseEvent, sseLines, waitForChange } from './live.js'
import { createDurableStreamsApi } from './durable-api.js'
import {
  boundedMemo, formatOffset, jsonArray, mediaType, parseOffset,
  type AppendRequest, type AppendResult, type CreateRequest, type DurableStreamStore, type Payload, type Position, type ProducerClaim,
  type ReadResult, type StreamInfo
} from './store.js'

/** What the plugin entry hands over: settings, the auth of every request, the function registry. */
export interface DurableStreamsHost {
  settings: DurableStreamsSettings
  /** The socket's auth (lib/auth.ts): the same auth function, `auth_timeout_ms`, `auth_failure` and refusals. */
  auth: Pick<SocketAuth, 'preValidation' | 'contextOf'>
  /** Whether an auth function is configured (reads are then cached privately only). */
  authConfigured: boolean
  registry: Registry
  adapter: StreamAdapter
  /** The `app.streams` object, which gains `durable`. */
  streams: object
}

export type StreamOperation = 'create' | 'append' | 'read' | 'head' | 'delete'

const OPERATIONS: Record<string, StreamOperation> = { PUT: 'create', POST: 'append', GET: 'read', HEAD: 'head', DELETE: 'delete' }

const EXPOSED_HEADERS = [
  'Stream-Next-Offset', 'Stream-Cursor', 'Stream-Up-To-Date', 'Stream-Closed', 'Stream-TTL', 'Stream-Expires-At',
  'Stream-SSE-Data-Encoding', 'Producer-Epoch', 'Producer-Seq', 'Producer-Expected-Seq', 'Producer-Received-Seq',
  'ETag', 'Location', 'Content-Type'
].join(', ')
const ALLOWED_HEADERS = [
  'Content-Type', 'Authorization', 'If-None-Match', 'Stream-TTL', 'Stream-Expires-At', 'Stream-Seq', 'Stream-Closed',
  'Stream-Forked-From', 'Stream-Fork-Offset', 'Stream-Fork-Sub-Offset', 'Producer-Id', 'Producer-Epoch', 'Producer-Seq'
].join(', ')
const CACHEABLE = 'public, max-age=60, stale-while-revalidate=300'
const CACHEABLE_PRIVATE = 'private, max-age=60, stale-while-revalidate=300'

/** URL paths whose stream names are remembered (see pathName). */
const MAX_REMEMBERED_PATHS = 1024

const DECIMAL = /^(0|[1-9]\d*)$/
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/

interface Target { name: string, context: unknown }
const TARGET = Symbol('fastify-streams.durable-stream')
type StreamRequest = FastifyRequest & { [TARGET]?: Target }

function header (request: FastifyRequest, name: string): string | null {
  const value = request.headers[name]
  if (value === undefined) return null
  return Array.isArray(value) ? value.join(', ') : value
}

function decimal (value: string, what: string): number {
  const number = Number(value)
  if (!DECIMAL.test(value) || !Number.isSafeInteger(number)) throw new StreamRequestError(`${what} must be a non-negative decimal integer`)
  return number
}

/** A decoded stream name, refused when it holds a control character, a backslash, or an empty, `.` or `..` segment. */
function checkStreamName (name: string, maxLength: number): string {
  if (name === '' || name.length > maxLength) throw new StreamRequestError(`a stream name has 1 to ${maxLength} characters`)
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f\\]/.test(name)) throw new StreamRequestError('a stream name may not hold control characters or backslashes')
  if (name.split('/').some(segment => segment === '' || segment === '.' || segment === '..')) {
    throw new StreamRequestError('a stream name may not hold empty, "." or ".." segments')
  }
  return name
}

/** The stream name of a URL path under `prefix`, percent-decoded; an encoded slash, backslash or NUL is refused. */
function streamName (path: string, prefix: string, maxLength: number): string {
  if (!path.startsWith(prefix + '/')) throw new StreamRequestError(`a stream path starts with ${prefix}/`)
  const raw = path.slice(prefix.length + 1)
  if (raw.length > maxLength) throw new StreamRequestError(`a stream name has 1 to ${maxLength} characters`)
  if (/%(2f|5c|00)/i.test(raw)) throw new StreamRequestError('a stream name may not hold an encoded slash, backslash or NUL')
  let name: string
  try {
    name = decodeURIComponent(raw)
  } catch {
    throw new StreamRequestError('the stream name is not valid percent-encoding')
  }
  return checkStreamName(name, maxLength)
}

/** The URL's path, without its query (every request's stream name comes from it: no query parsing for that). */
function pathOf (url: string): string {
  const mark = url.indexOf('?')
  return mark < 0 ? url : url.slice(0, mark)
}

function queryOf (url: string): URLSearchParams {
  const mark = url.indexOf('?')
  return new URLSearchParams(mark < 0 ? '' : url.slice(mark + 1))
}

function producerClaim (request: FastifyRequest): ProducerClaim | null {
  const id = header(request, 'producer-id')
  const epoch = header(request, 'producer-epoch')
  const seq = header(request, 'producer-seq')
  if (id === null && epoch === null && seq === null) return null
  if (id === null || epoch === null || seq === null) throw new StreamRequestError('Producer-Id, Producer-Epoch and Producer-Seq go together')
  if (id === '') throw new StreamRequestError('Producer-Id may not be empty')
  return { id, epoch: decimal(epoch, 'Producer-Epoch'), seq: decimal(seq, 'Producer-Seq') }
}

/** `Stream-Closed: true` (any case); the protocol has every other value mean the header is absent, not an error. */
function closedFlag (request: FastifyRequest): boolean {
  return header(request, 'stream-closed')?.toLowerCase() === 'true'
}

function bodyOf (request: FastifyRequest): Buffer {
  return Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0)
}

/** A read's body; JSON goes out as bytes too, so Fastify adds no charset to the stream's content type. */
function payloadBody (payload: Payload): Buffer {
  return payload.kind === 'bytes' ? payload.bytes : jsonArray(payload)
}

function payloadEmpty (payload: Payload): boolean {
  return payload.kind === 'bytes' ? payload.bytes.length === 0 : payload.count === 0
}

/** SSE carries text as is and JSON as arrays; every other content type is base64. */
function sseEncoding (contentType: string): 'text' | 'json' | 'base64' {
  const type = mediaType(contentType)
  if (type === 'application/json') return 'json'
  return type.startsWith('text/') ? 'text' : 'base64'
}

/** Length of the longest prefix of `bytes` that ends on a whole UTF-8 character. */
function utf8Prefix (bytes: Buffer): number {
  for (let back = 1; back <= Math.min(4, bytes.length); back++) {
    const byte = bytes[bytes.length - back]
    if ((byte & 0xc0) === 0x80) continue
    const length = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1
    return length > back ? bytes.length - back : bytes.length
  }
  return bytes.length
}

/** A text read cut by the chunk size inside a character ends before it (the rest comes with the next event). */
function wholeCharacters (result: ReadResult): ReadResult {
  const { payload, next, info } = result
  if (payload.kind !== 'bytes' || next === info.tail) return result
  const cut = utf8Prefix(payload.bytes)
  if (cut === 0 || cut === payload.bytes.length) return result
  return { ...result, next: next - (payload.bytes.length - cut), payload: { kind: 'bytes', bytes: payload.bytes.subarray(0, cut) } }
}

function sseData (payload: Payload, encoding: 'text' | 'json' | 'base64'): string[] {
  if (payload.kind === 'json') return [jsonArray(payload).toString('utf8')]
  return encoding === 'base64' ? [payload.bytes.toString('base64')] : sseLines(payload.bytes.toString('utf8'))
}

/** What an SSE reader sends of a read: the read as cut for its encoding, and its data event with each control event. */
interface SseRead { result: ReadResult, chunks: SseChunks }

/** Per read result: the readers sharing one read (live.ts SharedReads) frame its data once. */
const sseReads = new WeakMap<ReadResult, SseRead>()

function sseRead (read: ReadResult, encoding: 'text' | 'json' | 'base64'): SseRead {
  let entry = sseReads.get(read)
  if (entry === undefined) {
    const result = encoding === 'text' ? wholeCharacters(read) : read
    entry = { result, chunks: new SseChunks(() => payloadEmpty(result.payload) ? null : sseEvent('data', sseData(result.payload, encoding))) }
    sseReads.set(read, entry)
  }
  return entry
}

function isProducerAhead (err: unknown, request: AppendRequest): boolean {
  return request.producer !== null && (err as { code?: unknown }).code === 'STREAMS_ERR_PRODUCER_SEQ_GAP'
}

/** The configured adapter's own store of durable streams (an adapter capability; every built-in one has it). */
async function createStore (host: DurableStreamsHost): Promise<DurableStreamStore> {
  const { adapter } = host
  if (typeof adapter.durableStreamStore !== 'function') {
    throw new InvalidOptionError('durable_streams', 'the configured adapter does not store durable streams (it has no durableStreamStore(); use the KvStore or the RedisAdapter)')
  }
  return adapter.durableStreamStore()
}

export const durableStreamsRoutes: FastifyPluginAsync<DurableStreamsHost> = async (app: FastifyInstance, host) => {
  const { settings, registry } = host
  const prefix = settings.path
  const store = await createStore(host)
  const readers = new LiveReaders(settings.maxLiveReaders)
  const sharedReads = new SharedReads<ReadResult>((name, changed) => store.watch(name, changed))
  const sharedRead = (name: string, position: Position): Promise<ReadResult> =>
    sharedReads.read(name, String(position), () => store.read(name, position, settings.readChunkBytes))
  const api = createDurableStreamsApi(store, name => checkStreamName(name, settings.maxStreamPathLength), settings.readChunkBytes, registry)
  Object.defineProperty(host.streams, 'durable', { value: api, enumerable: true })
  // Reads behind auth may differ per user: shared caches must not serve them to others.
  const cacheable = host.authConfigured || settings.authorizeFunction !== null ? CACHEABLE_PRIVATE : CACHEABLE

  // Bodies are bytes whatever their content type; the stream's type decides what they mean.
  app.removeAllContentTypeParsers()
  const asBytes = { parseAs: 'buffer', bodyLimit: settings.maxAppendBytes } as const
  const keepBytes = (_request: FastifyRequest, body: Buffer, done: (err: null, body: Buffer) => void): void => done(null, body)
  // A pattern matching every content type, so Fastify remembers each type's parser (its catch-all `*` is looked
  // up afresh, parsing the header, on every request); `*` stays for requests without a content type.
  app.addContentTypeParser(/^/, asBytes, keepBytes)
  app.addContentTypeParser('*', asBytes, keepBytes)

  async function authorize (method: string, name: string, operation: StreamOperation, context: unknown): Promise<void> {
    const path = settings.authorizeFunction
    if (path === null) return
    let verdict: unknown
    try {
      verdict = await registry.call(path, { method, path: `${prefix}/${name}`, operation, context })
    } catch (err) {
      app.log.warn({ err, function_path: path }, 'fastify-streams: durable stream authorization failed')
      throw new ForbiddenError()
    }
    if (verdict === false || (verdict !== null && typeof verdict === 'object' && (verdict as { unauthorized?: unknown }).unauthorized === true)) {
      throw new ForbiddenError()
    }
  }

  // Every request names its stream by URL path; most traffic goes to a few streams.
  const pathName = boundedMemo((path) => streamName(path, prefix, settings.maxStreamPathLength), MAX_REMEMBERED_PATHS)
  // Without an auth function or an authorization function a request has nothing to wait for before its handler.
  const open = !host.authConfigured && settings.authorizeFunction === null

  /** Runs the auth function and the authorization function; resolves true once the request may go on. */
  async function admit (request: StreamRequest, reply: FastifyReply, name: string): Promise<boolean> {
    // Before the body is read: a refused (401) or timed-out (503) request is answered here.
    await host.auth.preValidation(request, reply)
    if (reply.sent) return false
    const context = host.auth.contextOf(request)
    const operation = OPERATIONS[request.method]
    if (operation === undefined) return true
    await authorize(request.method, name, operation, context)
    const source = request.method === 'PUT' ? header(request, 'stream-forked-from') : null
    // Forking copies the source's data, so it needs the right to read the source too.
    if (source !== null) await authorize('GET', streamName(source, prefix, settings.maxStreamPathLength), 'read', context)
    request[TARGET] = { name, context }
    return true
  }

  // A callback hook, not an async one: without auth (the common case) the request goes on in the same call.
  app.addHook('onRequest', (request: StreamRequest, reply, done) => {
    // Browser hardening and CORS on every response, errors included.
    reply.header('x-content-type-options', 'nosniff')
    reply.header('cross-origin-resource-policy', 'cross-origin')
    if (settings.corsOrigin !== null) {
      reply.header('access-control-allow-origin', settings.corsOrigin)
      reply.header('access-control-expose-headers', EXPOSED_HEADERS)
      if (settings.corsOrigin !== '*') reply.header('vary', 'Origin')
    }
    if (request.method === 'OPTIONS') return done()
    let name: string
    try {
      name = pathName(pathOf(request.url))
    } catch (err) {
      return done(err as Error)
    }
    if (open) {
      request[TARGET] = { name, context: null }
      return done()
    }
    // A request answered by the auth (401, 503) goes no further: done is not called.
    admit(request, reply, name).then(admitted => { if (admitted) done() }, done)
  })

  app.setErrorHandler((err: FastifyError & { headers?: Record<string, string> }, request, reply) => {
    let error = err
    if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') error = new PayloadTooLargeError(settings.maxAppendBytes)
    else if (err.code?.startsWith('FST_ERR_CTP')) error = new StreamRequestError(err.message)
    const status = error.statusCode ?? 500
    if (status >= 500 && error.code !== 'STREAMS_ERR_TOO_MANY_READERS') request.log.error({ err: error }, 'fastify-streams: durable stream request failed')
    for (const [name, value] of Object.entries(error.headers ?? {})) reply.header(name, value)
    reply.header('cache-control', 'no-store')
    // A failure of ours is described by its coded error; any other (a storage driver's, say) is logged, not shown.
    const ours = error.code?.startsWith('STREAMS_ERR_') === true
    reply.code(status).send(status >= 500 && !ours ? { code: 'STREAMS_ERR_INTERNAL', message: 'Internal error' } : { code: error.code ?? 'STREAMS_ERR_INTERNAL', message: error.message })
  })

  function describe (reply: FastifyReply, info: StreamInfo, next: Position = info.tail): void {
    reply.header('content-type', info.contentType)
    reply.header('stream-next-offset', formatOffset(next))
    if (info.closed && next === info.tail) reply.header('stream-closed', 'true')
  }

  async function create (request: StreamRequest, reply: FastifyReply, target: Target): Promise<void> {
    const ttl = header(request, 'stream-ttl')
    const expires = header(request, 'stream-expires-at')
    if (ttl !== null && expires !== null) throw new StreamRequestError('give Stream-TTL or Stream-Expires-At, not both')
    let expiresAt: number | null = null
    if (expires !== null) {
      expiresAt = Date.parse(expires)
      if (!RFC3339.test(expires.trim()) || Number.isNaN(expiresAt)) throw new StreamRequestError('Stream-Expires-At is an RFC 3339 timestamp')
    }
    const source = header(request, 'stream-forked-from')
    const forkOffset = header(request, 'stream-fork-offset')
    const subOffsetHeader = header(request, 'stream-fork-sub-offset')
    if (source === null && (forkOffset !== null || subOffsetHeader !== null)) throw new StreamRequestError('fork headers need Stream-Forked-From')
    const subOffset = subOffsetHeader === null ? 0 : decimal(subOffsetHeader, 'Stream-Fork-Sub-Offset')
    if (subOffset > 0 && forkOffset === null) throw new StreamRequestError('Stream-Fork-Sub-Offset needs Stream-Fork-Offset')
    let offset: Position | null = null
    if (forkOffset !== null) {
      offset = parseOffset(forkOffset)
      if (offset === null) throw new StreamRequestError('Stream-Fork-Offset is not an offset')
    }
    const createRequest: CreateRequest = {
      contentType: header(request, 'content-type'),
      ttlSeconds: ttl === null ? null : decimal(ttl, 'Stream-TTL'),
      expiresAt,
      closed: closedFlag(request),
      body: bodyOf(request),
      fork: source === null ? null : { source: streamName(source, prefix, settings.maxStreamPathLength), offset, subOffset }
    }
    const { created, info } = await store.create(target.name, createRequest)
    describe(reply, info)
    if (created) reply.header('location', `${request.protocol}://${request.host}${prefix}/${encodeURI(target.name)}`)
    reply.code(created ? 201 : 200).send()
  }

  async function append (request: StreamRequest, reply: FastifyReply, target: Target): Promise<void> {
    const body = bodyOf(request)
    const close = closedFlag(request)
    if (body.length === 0 && !close) throw new StreamRequestError('an append needs a body (or Stream-Closed: true)')
    const appendRequest: AppendRequest = {
      contentType: header(request, 'content-type'),
      body,
      close,
      streamSeq: header(request, 'stream-seq'),
      producer: producerClaim(request)
    }
    if (appendRequest.streamSeq === '') throw new StreamRequestError('Stream-Seq may not be empty')
    const result = await appendInOrder(target.name, appendRequest)
    reply.header('stream-next-offset', formatOffset(result.info.tail))
    if (result.info.closed) reply.header('stream-closed', 'true')
    if (result.producer !== null) {
      reply.header('producer-epoch', String(result.producer.epoch))
      reply.header('producer-seq', String(result.producer.seq))
    }
    // With producer headers new data answers 200 and a retry 204; a close alone and plain appends answer 204.
    const fresh = result.outcome === 'appended' && appendRequest.producer !== null && body.length > 0
    reply.code(fresh ? 200 : 204).send()
  }

  /**
   * Appends; a producer's append refused as a sequence gap (it overtook its predecessors on another connection)
   * is tried again after each change of the stream for up to `producer_reorder_wait_ms` before the 409 goes out.
   */
  // Appends waiting for their producer's predecessors; a closing app answers them at once (409), not after the wait.
  const heldAppends = new Set<ReturnType<typeof watcher>>()
  let closing = false

  async function appendInOrder (name: string, request: AppendRequest): Promise<AppendResult> {
    try {
      return await store.append(name, request)
    } catch (err) {
      if (!isProducerAhead(err, request) || settings.producerReorderWaitMs === 0) throw err
    }
    const deadline = Date.now() + settings.producerReorderWaitMs
    const watch = watcher(name)
    heldAppends.add(watch)
    try {
      for (;;) {
        watch.pending = false
        try {
          return await store.append(name, request)
        } catch (err) {
          if (!isProducerAhead(err, request) || closing || Date.now() >= deadline) throw err
        }
        if (watch.pending) continue
        await new Promise<void>(resolve => {
          const timer = setTimeout(resolve, deadline - Date.now())
          timer.unref()
          watch.wake = () => {
            clearTimeout(timer)
            resolve()
          }
        })
        watch.wake = null
      }
    } finally {
      heldAppends.delete(watch)
      watch.stop()
    }
  }

  async function head (reply: FastifyReply, target: Target): Promise<void> {
    const info = await store.head(target.name)
    describe(reply, info)
    if (info.ttlSeconds !== null) reply.header('stream-ttl', String(info.ttlSeconds))
    if (info.expiresAt !== null) reply.header('stream-expires-at', new Date(info.expiresAt).toISOString())
    reply.header('cache-control', 'no-store')
    reply.code(200).send()
  }

  async function remove (reply: FastifyReply, target: Target): Promise<void> {
    await store.delete(target.name)
    reply.code(204).send()
  }

  /** A catch-up read's (or a long-poll's data) response: ETag, caching, up-to-date and closed markers. */
  function sendRead (request: FastifyRequest, reply: FastifyReply, result: ReadResult, tailRequest: boolean): void {
    const { info, next } = result
    describe(reply, info, next)
    const atTail = next === info.tail
    if (atTail) reply.header('stream-up-to-date', 'true')
    if (tailRequest) {
      reply.header('cache-control', 'no-store')
    } else {
      const etag = `"${info.id}:${formatOffset(result.from)}:${formatOffset(next)}${info.closed && atTail ? ':closed' : ''}"`
      reply.header('etag', etag)
      // A read that reached the tail of an open stream changes with the next append: revalidate it.
      reply.header('cache-control', atTail && !info.closed ? 'no-cache' : cacheable)
      if (header(request, 'if-none-match') === etag) {
        reply.code(304).send()
        return
      }
    }
    reply.code(200).send(payloadBody(result.payload))
  }

  /** Watches `name` for the caller's whole wait: `pending` tells a change arrived since it was last cleared. */
  function watcher (name: string): { pending: boolean, wake: (() => void) | null, stop: () => void } {
    const watch = {
      pending: false,
      wake: null as (() => void) | null,
      stop: () => {}
    }
    watch.stop = store.watch(name, () => {
      watch.pending = true
      watch.wake?.()
    })
    return watch
  }

  function sendTail (reply: FastifyReply, info: StreamInfo, position: Position): void {
    describe(reply, info, position)
    reply.header('stream-up-to-date', 'true')
    reply.header('cache-control', 'no-store')
    reply.code(204).send()
  }

  async function longPoll (request: FastifyRequest, reply: FastifyReply, target: Target, from: Position | null, cursor: string | null): Promise<void> {
    reply.header('stream-cursor', nextCursor(cursor))
    const deadline = Date.now() + settings.longPollTimeoutMs
    const watch = watcher(target.name)
    try {
      const position = from ?? (await store.head(target.name)).tail
      for (;;) {
        watch.pending = false
        const result = await sharedRead(target.name, position)
        if (!payloadEmpty(result.payload)) return sendRead(request, reply, result, false)
        const remaining = deadline - Date.now()
        if (result.info.closed || remaining <= 0) return sendTail(reply, result.info, position)
        if (watch.pending) continue
        const outcome = await waitForChange(listener => {
          watch.wake = listener
          return () => { watch.wake = null }
        }, remaining, readers, request.raw)
        if (outcome === 'ended') return sendTail(reply, result.info, position)
      }
    } finally {
      watch.stop()
    }
  }

  async function sse (request: FastifyRequest, reply: FastifyReply, target: Target, from: Position | null, cursor: string | null): Promise<void> {
    const reader = { ended: false }
    const watch = watcher(target.name)
    const finish = (): void => {
      reader.ended = true
      watch.wake?.()
    }
    let release: () => void
    let first: ReadResult
    try {
      release = readers.admit(finish)
      try {
        first = from === null ? await store.read(target.name, null, settings.readChunkBytes) : await sharedRead(target.name, from)
      } catch (err) {
        release()
        throw err
      }
    } catch (err) {
      watch.stop()
      throw err
    }
    const encoding = sseEncoding(first.info.contentType)
    const timer = setTimeout(finish, settings.sseMaxDurationMs)
    timer.unref()
    reply.hijack()
    const response = reply.raw
    const headers: Record<string, string | number | string[]> = {}
    for (const [name, value] of Object.entries(reply.getHeaders())) if (value !== undefined) headers[name] = value
    headers['content-type'] = 'text/event-stream'
    headers['cache-control'] = 'no-cache'
    if (encoding === 'base64') headers['stream-sse-data-encoding'] = 'base64'
    const writer = new SseWriter(response)
    writer.start(headers)
    response.on('close', finish)
    try {
      let result: ReadResult | null = first
      let position = first.from
      let announced = false
      while (!reader.ended) {
        watch.pending = false
        const { result: read, chunks } = sseRead(result ?? await sharedRead(target.name, position), encoding)
        result = null
        const { info, next } = read
        const atTail = next === info.tail
        // The data and its control event go out in one write.
        if (atTail && info.closed) {
          writer.write(chunks.chunk('closed', () => sseEvent('control', [JSON.stringify({ streamNextOffset: formatOffset(next), streamClosed: true })])))
          break
        }
        let frame: Buffer | null = null
        if (chunks.dataEvent !== null || !announced) {
          const streamCursor = nextCursor(cursor)
          frame = chunks.chunk(streamCursor, () => sseControl(formatOffset(next), streamCursor, atTail))
          announced = true
        }
        position = next
        if (frame !== null && !writer.write(frame)) await writer.drained()
        if (atTail && !watch.pending && !reader.ended) {
          await new Promise<void>(resolve => { watch.wake = resolve })
          watch.wake = null
          // The appends handled in this turn go out together: one read and one write per reader, however many.
          // (Not when ending: the app may be closing its connections within this turn.)
          if (!reader.ended) await endOfTurn()
        }
      }
    } catch (err) {
      // The stream was deleted or expired under the reader: end the response, the client's next request says why.
      request.log.debug({ err }, 'fastify-streams: SSE reader ended')
    } finally {
      clearTimeout(timer)
      watch.stop()
      release()
      response.end()
    }
  }

  async function read (request: StreamRequest, reply: FastifyReply, target: Target): Promise<void> {
    const query = queryOf(request.url)
    const offsets = query.getAll('offset')
    const lives = query.getAll('live')
    if (offsets.length > 1 || lives.length > 1) throw new StreamRequestError('offset and live are given at most once')
    const live = lives[0] ?? null
    if (live !== null && live !== 'long-poll' && live !== 'sse') throw new StreamRequestError('live is long-poll or sse')
    const token = offsets[0] ?? null
    if (live !== null && token === null) throw new StreamRequestError('live reads need an offset')
    let from: Position | null = 0
    if (token === 'now') from = null
    else if (token !== null) {
      from = parseOffset(token)
      if (from === null) throw new StreamRequestError('malformed offset')
    }
    const cursor = query.get('cursor')
    if (live === 'long-poll') return longPoll(request, reply, target, from, cursor)
    if (live === 'sse') return sse(request, reply, target, from, cursor)
    const result = await store.read(target.name, from, settings.readChunkBytes)
    sendRead(request, reply, result, from === null)
  }

  app.route({
    method: ['GET', 'HEAD', 'PUT', 'POST', 'DELETE', 'OPTIONS'],
    url: `${prefix}/*`,
    exposeHeadRoute: false,
    handler: async (request: StreamRequest, reply) => {
      if (request.method === 'OPTIONS') {
        reply.header('access-control-allow-methods', 'GET, HEAD, PUT, POST, DELETE, OPTIONS')
        reply.header('access-control-allow-headers', header(request, 'access-control-request-headers') ?? ALLOWED_HEADERS)
        reply.header('access-control-max-age', '86400')
        return reply.code(204).send()
      }
      const target = request[TARGET]!
      switch (request.method) {
        case 'PUT': return create(request, reply, target)
        case 'POST': return append(request, reply, target)
        case 'HEAD': return head(reply, target)
        case 'DELETE': return remove(reply, target)
        default: return read(request, reply, target)
      }
    }
  })

  app.addHook('preClose', async () => {
    closing = true
    for (const held of heldAppends) held.wake?.()
    readers.endAll()
  })
  // No onClose for the store: it is the adapter's and closes with it (a borrowed adapter's stays open for its
  // owner); this app's live readers, the only users of its watchers, ended in preClose.
}
