// Live HTTP reads, independent of what is read: the registry of open long-poll and SSE responses (bounded,
// ended together when the app closes), reads shared by the readers waiting at one place, waiting for a change
// with a time-out, SSE framing, and CDN cursors.
import type { IncomingMessage, ServerResponse } from 'node:http'
import { TooManyReadersError } from '../errors.js'

/** Open live responses, at most `max`; `endAll` finishes every one of them (the app is closing). */
export class LiveReaders {
  private readonly open = new Set<() => void>()
  private ended = false

  constructor (private readonly max: number) {}

  get size (): number {
    return this.open.size
  }

  /** Registers a live response ended by `end`; returns its release. Refuses (503) past the limit or once closing. */
  admit (end: () => void): () => void {
    if (this.ended || this.open.size >= this.max) throw new TooManyReadersError(this.open.size)
    this.open.add(end)
    return () => { this.open.delete(end) }
  }

  endAll (): void {
    this.ended = true
    for (const end of [...this.open]) end()
    this.open.clear()
  }
}

/**
 * One read per (scope, key) for every reader asking while it runs: a change wakes all the readers of its scope
 * (a stream, a group) at once, and a reconnect storm brings them all to one offset; each would read the same
 * entries. A read is shared while it runs and until the end of the turn it settled in, and only until its scope
 * changes again: a later reader then reads afresh, so it never misses that change. `watch` tells of a scope's
 * changes while it has reads running; without it the owner calls `changed`.
 */
export class SharedReads<T> {
  private readonly scopes = new Map<string, { reads: Map<string, Promise<T>>, stop: () => void }>()

  constructor (private readonly watch: (scope: string, changed: () => void) => () => void = () => () => {}) {}

  read (scope: string, key: string, start: () => Promise<T>): Promise<T> {
    let entry = this.scopes.get(scope)
    if (entry === undefined) {
      const reads = new Map<string, Promise<T>>()
      entry = { reads, stop: this.watch(scope, () => this.forget(scope, reads)) }
      this.scopes.set(scope, entry)
    }
    const { reads } = entry
    let read = reads.get(key)
    if (read === undefined) {
      read = start()
      reads.set(key, read)
      // Kept until the end of the turn it settled in, not only while it runs: a store that answers at once
      // (memory) would otherwise have settled it before the next of the readers one change woke asks.
      const forgetLater = (): void => {
        setImmediate(() => {
          if (reads.get(key) === read) reads.delete(key)
          if (reads.size === 0) this.forget(scope, reads)
        })
      }
      read.then(forgetLater, forgetLater)
    }
    return read
  }

  /** The scope changed: reads asked for from now on start afresh. */
  changed (scope: string): void {
    const entry = this.scopes.get(scope)
    if (entry !== undefined) this.forget(scope, entry.reads)
  }

  /** Everything may have changed (events were missed): every read starts afresh. */
  changedAll (): void {
    for (const [scope, entry] of [...this.scopes]) this.forget(scope, entry.reads)
  }

  private forget (scope: string, reads: Map<string, Promise<T>>): void {
    const entry = this.scopes.get(scope)
    if (entry?.reads !== reads) return
    this.scopes.delete(scope)
    entry.stop()
  }
}

let turnEnd: Promise<void> | null = null

/**
 * Resolves once the I/O of the current turn of the event loop has been handled (at setImmediate), with one promise
 * for every caller in the turn: live readers woken by several appends of one turn then read and write once.
 */
export function endOfTurn (): Promise<void> {
  turnEnd ??= new Promise(resolve => setImmediate(() => {
    turnEnd = null
    resolve()
  }))
  return turnEnd
}

export type WaitOutcome = 'changed' | 'timeout' | 'ended'

/**
 * Resolves on the first of: `subscribe`'s listener firing ('changed'), `timeoutMs` passing ('timeout'), the
 * client going away or the app closing ('ended'). Always unsubscribes and releases its slot.
 */
export function waitForChange (subscribe: (listener: () => void) => () => void, timeoutMs: number, readers: LiveReaders,
  request: IncomingMessage): Promise<WaitOutcome> {
  return new Promise((resolve, reject) => {
    let release: () => void = () => {}
    let unsubscribe: () => void = () => {}
    const finish = (outcome: WaitOutcome): void => {
      clearTimeout(timer)
      unsubscribe()
      release()
      request.off('close', onGone)
      resolve(outcome)
    }
    const onGone = (): void => finish('ended')
    const timer = setTimeout(() => finish('timeout'), timeoutMs)
    timer.unref()
    try {
      release = readers.admit(() => finish('ended'))
    } catch (err) {
      clearTimeout(timer)
      reject(err)
      return
    }
    unsubscribe = subscribe(() => finish('changed'))
    request.once('close', onGone)
  })
}

/**
 * `text` as one HTTP/1.1 chunk (size line, bytes, CRLF). SSE writes go to the socket as such, built once per event
 * for every reader, instead of through ServerResponse's per-write framing and corking.
 */
export function httpChunk (text: string): Buffer {
  const length = Buffer.byteLength(text)
  const head = `${length.toString(16)}\r\n`
  const chunk = Buffer.allocUnsafe(head.length + length + 2)
  chunk.write(head, 0, 'latin1')
  chunk.write(text, head.length, 'utf8')
  chunk.write('\r\n', head.length + length, 'latin1')
  return chunk
}

/**
 * An SSE response written as HTTP/1.1 chunks (see httpChunk) straight to its socket once `start` sent the headers:
 * one socket write per event, of bytes that every reader of the same event shares.
 */
export class SseWriter {
  constructor (private readonly response: ServerResponse) {}

  /** Sends the status line and headers now; chunked whatever the client's HTTP version (the chunks frame themselves). */
  start (headers: Record<string, string | number | string[]>): void {
    this.response.writeHead(200, { ...headers, 'transfer-encoding': 'chunked' })
    this.response.flushHeaders()
  }

  /** Returns false when the socket's buffer is full (wait for `drained` before writing more). */
  write (chunk: Buffer): boolean {
    const socket = this.response.socket
    if (socket === null || socket.destroyed) return true
    return socket.write(chunk)
  }

  /** Bytes written but not yet taken by the kernel. */
  get buffered (): number {
    return this.response.socket?.writableLength ?? 0
  }

  drained (): Promise<void> {
    const socket = this.response.socket
    if (socket === null || socket.destroyed) return Promise.resolve()
    return new Promise(resolve => {
      const done = (): void => {
        socket.off('drain', done)
        this.response.off('close', done)
        resolve()
      }
      socket.once('drain', done)
      this.response.once('close', done)
    })
  }
}

/**
 * One Server-Sent Event: every payload line gets its own `data:` line. A reader drops one space after the
 * colon, so a line that starts with a space gets one more, which keeps its own; other lines follow the colon at
 * once (the form the conformance suite expects).
 */
export function sseEvent (type: string, lines: string[]): string {
  let frame = `event: ${type}\n`
  for (const line of lines) frame += line.startsWith(' ') ? `data: ${line}\n` : `data:${line}\n`
  return frame + '\n'
}

/** The control event after data: where the reader goes on from, its cursor, and whether it reached the tail. */
export function sseControl (next: string, cursor: string, upToDate: boolean): string {
  return sseEvent('control', [`{"streamNextOffset":"${next}","streamCursor":"${cursor}"${upToDate ? ',"upToDate":true' : ''}}`])
}

/**
 * What the SSE readers of one read (or one batch of events) send: its data event, built once, and with each
 * control event after it one HTTP chunk of both, built once for every reader sending that control event (readers
 * mostly share their cursor, so the bytes of one event are built once and written to each socket).
 */
export class SseChunks {
  private event: string | null | undefined
  private readonly chunks = new Map<string, Buffer>()

  /** `data` builds the data event, null when there is no data. */
  constructor (private readonly data: () => string | null) {}

  get dataEvent (): string | null {
    if (this.event === undefined) this.event = this.data()
    return this.event
  }

  /** The data event and the control event `control()` as one HTTP chunk; `key` names the control event. */
  chunk (key: string, control: () => string): Buffer {
    let chunk = this.chunks.get(key)
    if (chunk === undefined) {
      chunk = httpChunk((this.dataEvent ?? '') + control())
      this.chunks.set(key, chunk)
    }
    return chunk
  }
}

/** Splits text into SSE data lines on every line break form, so a CR or LF inside a payload stays data. */
export function sseLines (text: string): string[] {
  return text.split(/\r\n|\r|\n/)
}

const CURSOR_EPOCH_MS = Date.UTC(2024, 9, 9)
const CURSOR_INTERVAL_MS = 20_000
const CURSOR_MAX_JITTER_INTERVALS = 180

/**
 * The protocol's CDN cursor: the current 20 s interval since 2024-10-09, and always past the client's own
 * cursor (by a random jitter) so a cached response can never send a client round in a loop.
 */
export function nextCursor (clientCursor: string | null, now = Date.now()): string {
  const interval = Math.floor((now - CURSOR_EPOCH_MS) / CURSOR_INTERVAL_MS)
  const echoed = clientCursor !== null && /^\d{1,15}$/.test(clientCursor) ? Number(clientCursor) : -1
  if (echoed < interval) return String(interval)
  return String(echoed + 1 + Math.floor(Math.random() * CURSOR_MAX_JITTER_INTERVALS))
}
