// Durable streams without HTTP: `app.streams.durable` for route handlers, and the same calls as registry
// functions (`durable_streams.create`, `.append`, `.close`, `.read`, `.head`, `.delete`). Same store, same
// rules, same live readers woken as for HTTP appends.
import { InvalidArgumentError } from '../errors.js'
import type { Registry } from '../registry.js'
import { DEFAULT_CONTENT_TYPE, RecentMap, formatOffset, isJsonType, jsonArray, mediaType, parseOffset, type AppendResult, type DurableStreamStore, type ProducerClaim } from './store.js'

/** Streams whose content types the API remembers for its appends. */
const MAX_REMEMBERED_TYPES = 1024

export interface DurableCreateOptions {
  contentType?: string
  ttlSeconds?: number
  expiresAt?: Date | string
  closed?: boolean
  /** Initial content, encoded as `append` encodes data. */
  data?: unknown
}

export interface DurableAppendOptions {
  close?: boolean
  streamSeq?: string
  producer?: ProducerClaim
}

export interface DurableReadResult {
  /** JSON streams: the messages. */
  messages?: unknown[]
  /** Other streams: the bytes. */
  data?: Buffer
  nextOffset: string
  upToDate: boolean
  closed: boolean
}

export interface DurableStreamInfo {
  contentType: string
  offset: string
  closed: boolean
  ttlSeconds: number | null
  expiresAt: string | null
}

/** `app.streams.durable`: names are the stream paths under `durable_streams.path` (e.g. `chat/42`). */
export interface DurableStreamsApi {
  /** Creates a stream; a no-op when it exists with the same configuration (409 error otherwise). */
  create (name: string, options?: DurableCreateOptions): Promise<{ created: boolean, offset: string }>
  /**
   * Appends `data`: on a JSON stream any JSON value (an array appends each element as one message), on other
   * streams a string or bytes.
   */
  append (name: string, data: unknown, options?: DurableAppendOptions): Promise<{ offset: string, duplicate: boolean, closed: boolean }>
  close (name: string): Promise<{ offset: string }>
  /** Reads from `offset` (default: the start; `now`: the tail) at most `maxBytes` (default: the read chunk size). */
  read (name: string, options?: { offset?: string, maxBytes?: number }): Promise<DurableReadResult>
  head (name: string): Promise<DurableStreamInfo>
  delete (name: string): Promise<void>
}

function encode (data: unknown, json: boolean): Buffer {
  if (json) return Buffer.from(JSON.stringify(data === undefined ? null : data))
  if (typeof data === 'string') return Buffer.from(data)
  if (data instanceof Uint8Array) return Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  throw new InvalidArgumentError('data of a byte stream is a string or a Uint8Array')
}

export function createDurableStreamsApi (store: DurableStreamStore, checkName: (name: string) => string, readChunkBytes: number, registry: Registry): DurableStreamsApi {
  // Encoding data needs the stream's content type, which never changes: appends ask the store for it once.
  const contentTypes = new RecentMap<string>(MAX_REMEMBERED_TYPES)
  async function contentTypeOf (stream: string): Promise<string> {
    const { contentType } = await store.head(stream)
    contentTypes.set(stream, contentType)
    return contentType
  }

  const api: DurableStreamsApi = {
    async create (name, options = {}) {
      const contentType = options.contentType ?? DEFAULT_CONTENT_TYPE
      const expiresAt = options.expiresAt === undefined ? null : new Date(options.expiresAt).getTime()
      if (expiresAt !== null && Number.isNaN(expiresAt)) throw new InvalidArgumentError('expiresAt is not a date')
      const ttl = options.ttlSeconds ?? null
      if (ttl !== null && (!Number.isSafeInteger(ttl) || ttl < 0)) throw new InvalidArgumentError('ttlSeconds is a non-negative integer')
      const body = options.data === undefined ? Buffer.alloc(0) : encode(options.data, isJsonType(contentType))
      const { created, info } = await store.create(checkName(name), { contentType, ttlSeconds: ttl, expiresAt, closed: options.closed === true, body, fork: null })
      return { created, offset: formatOffset(info.tail) }
    },
    async append (name, data, options = {}) {
      const stream = checkName(name)
      const appendAs = (contentType: string): Promise<AppendResult> => store.append(stream, {
        contentType,
        body: encode(data, isJsonType(contentType)),
        close: options.close === true,
        streamSeq: options.streamSeq ?? null,
        producer: options.producer ?? null
      })
      const remembered = contentTypes.get(stream)
      let result: AppendResult
      try {
        result = await appendAs(remembered ?? await contentTypeOf(stream))
      } catch (err) {
        // Refused on a remembered type: the stream may have been created again with another one.
        if (remembered === undefined) throw err
        const contentType = await contentTypeOf(stream)
        if (mediaType(contentType) === mediaType(remembered)) throw err
        result = await appendAs(contentType)
      }
      return { offset: formatOffset(result.info.tail), duplicate: result.outcome === 'duplicate', closed: result.info.closed }
    },
    async close (name) {
      const result = await store.append(checkName(name), { contentType: null, body: Buffer.alloc(0), close: true, streamSeq: null, producer: null })
      return { offset: formatOffset(result.info.tail) }
    },
    async read (name, options = {}) {
      const token = options.offset ?? '-1'
      const from = token === 'now' ? null : parseOffset(token)
      if (from === null && token !== 'now') throw new InvalidArgumentError(`malformed offset "${token}"`)
      const result = await store.read(checkName(name), from, options.maxBytes ?? readChunkBytes)
      const upToDate = result.next === result.info.tail
      const out: DurableReadResult = { nextOffset: formatOffset(result.next), upToDate, closed: upToDate && result.info.closed }
      if (result.payload.kind === 'json') out.messages = JSON.parse(jsonArray(result.payload).toString('utf8')) as unknown[]
      else out.data = result.payload.bytes
      return out
    },
    async head (name) {
      const info = await store.head(checkName(name))
      return {
        contentType: info.contentType,
        offset: formatOffset(info.tail),
        closed: info.closed,
        ttlSeconds: info.ttlSeconds,
        expiresAt: info.expiresAt === null ? null : new Date(info.expiresAt).toISOString()
      }
    },
    async delete (name) {
      const stream = checkName(name)
      contentTypes.delete(stream)
      await store.delete(stream)
    }
  }
  type Input = Record<string, unknown> & { name: string }
  const functions: Record<string, (input: Input) => Promise<unknown>> = {
    create: (input) => api.create(input.name, { contentType: input.content_type as string | undefined, ttlSeconds: input.ttl_seconds as number | undefined, expiresAt: input.expires_at as string | undefined, closed: input.closed as boolean | undefined, data: input.data }),
    append: (input) => api.append(input.name, input.data, { close: input.close as boolean | undefined, streamSeq: input.stream_seq as string | undefined }),
    close: (input) => api.close(input.name),
    read: (input) => api.read(input.name, { offset: input.offset as string | undefined, maxBytes: input.max_bytes as number | undefined }),
    head: (input) => api.head(input.name),
    delete: async (input) => { await api.delete(input.name); return null }
  }
  for (const [call, run] of Object.entries(functions)) {
    registry.registerFunction({
      function_path: `durable_streams.${call}`,
      handler: (input: unknown) => {
        if (input === null || typeof input !== 'object' || typeof (input as Input).name !== 'string') throw new InvalidArgumentError('input is { name, ... }')
        return run(input as Input)
      }
    })
  }
  return api
}
