// What one client may take: sockets (in total and per address), which sites may open them, and how fast a socket
// may send frames. Everything here refuses before the work it guards: handshakes before the upgrade, frames
// before they are parsed.
import { readFileSync } from 'node:fs'
import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from 'fastify'
import type { WebSocket } from 'ws'
import { AuthTimeoutError } from './errors.js'
import type { StreamsMetrics } from './metrics.js'
import { FD_RESERVE, type LimitOptions } from './options.js'

/** Why a handshake or a socket was refused (a log field and a metrics label). */
export type RefusalReason = 'auth' | 'auth_timeout' | 'origin' | 'limit' | 'limit_per_ip' | 'join_trigger' | 'subscriptions' | 'frame_rate' | 'invalid_frame'

export interface Refusal { status: number, code: string, reason: RefusalReason, message: string }

/** The process's soft limit on open files, or null where it cannot be read (not Linux). */
export function openFileLimit (): number | null {
  try {
    const line = readFileSync('/proc/self/limits', 'utf8').split('\n').find(row => row.startsWith('Max open files'))
    const soft = Number(line?.split(/\s{2,}/)[1])
    return Number.isSafeInteger(soft) && soft > 0 ? soft : null
  } catch {
    return null
  }
}

/**
 * `max_connections`, lowered where needed so that FD_RESERVE descriptors stay free for everything else the
 * process serves: the stream sockets alone must never exhaust the open-file limit.
 */
export function effectiveMaxConnections (maxConnections: number, fileLimit = openFileLimit()): number {
  if (fileLimit === null) return maxConnections
  return Math.max(1, Math.min(maxConnections, fileLimit - FD_RESERVE))
}

/** Is a handshake with this `Origin` allowed? Clients that send none (not browsers) always are. */
export function originAllowed (origin: string | undefined, host: string | undefined, allowed: LimitOptions['allowedOrigins']): boolean {
  if (origin === undefined || allowed === '*') return true
  const given = origin.toLowerCase()
  if (allowed !== null) return allowed.includes(given)
  // Same origin: the Origin's host[:port] is the Host the browser connected to.
  try {
    return host !== undefined && new URL(given).host === host.toLowerCase()
  } catch {
    return false
  }
}

/**
 * Counts stream sockets from the start of their handshake to the close of their TCP socket, in total and per
 * client address, and refuses a handshake past either limit.
 */
export class ConnectionGate {
  private total = 0
  private readonly perAddress = new Map<string, number>()

  constructor (private readonly maxConnections: number, private readonly maxPerAddress: number, private readonly allowedOrigins: LimitOptions['allowedOrigins']) {}

  /** Takes a place for the handshake (given back when its TCP socket closes), or says why it is refused. */
  admit (request: FastifyRequest): Refusal | null {
    if (!originAllowed(request.headers.origin, request.headers.host, this.allowedOrigins)) {
      return { status: 403, code: 'STREAMS_ERR_ORIGIN', reason: 'origin', message: 'Origin not allowed' }
    }
    if (this.total >= this.maxConnections) {
      return { status: 503, code: 'STREAMS_ERR_TOO_MANY_CONNECTIONS', reason: 'limit', message: 'Too many connections' }
    }
    const address = request.ip
    const mine = this.perAddress.get(address) ?? 0
    if (mine >= this.maxPerAddress) {
      return { status: 429, code: 'STREAMS_ERR_TOO_MANY_CONNECTIONS', reason: 'limit_per_ip', message: 'Too many connections from this address' }
    }
    this.total++
    this.perAddress.set(address, mine + 1)
    request.raw.socket.once('close', () => {
      this.total--
      const left = (this.perAddress.get(address) ?? 1) - 1
      if (left > 0) this.perAddress.set(address, left)
      else this.perAddress.delete(address)
    })
    return null
  }

  /** Sockets counted now, handshakes included. */
  get size (): number {
    return this.total
  }
}

/** A token bucket: `rate` tokens a second, at most `burst` saved up. */
export class TokenBucket {
  private tokens: number
  private last = performance.now()

  constructor (private readonly rate: number, private readonly burst: number) {
    this.tokens = burst
  }

  /** Takes one token; false when none is left (the caller is over its rate). */
  take (): boolean {
    const now = performance.now()
    this.tokens = Math.min(this.burst, this.tokens + (now - this.last) * this.rate / 1000)
    this.last = now
    if (this.tokens < 1) return false
    this.tokens--
    return true
  }
}

const CLIENT_GONE = new Error('the client closed its connection during the handshake')

/**
 * The WebSocket route's guard: origin and connection limits before anything else is spent on a handshake
 * (`onRequest`), then a deadline on the auth function (`within`, `settle`). Every refusal is logged and counted.
 */
export class HandshakeGuard {
  private readonly gate: ConnectionGate

  constructor (private readonly limits: LimitOptions, private readonly log: FastifyBaseLogger, private readonly metrics: StreamsMetrics) {
    const maxConnections = effectiveMaxConnections(limits.maxConnections)
    if (maxConnections < limits.maxConnections) {
      log.warn({ max_connections: limits.maxConnections, used: maxConnections }, 'fastify-streams: max_connections lowered to keep file descriptors for the rest of the app')
    }
    this.gate = new ConnectionGate(maxConnections, limits.maxConnectionsPerIp, limits.allowedOrigins)
  }

  readonly onRequest = async (request: FastifyRequest, reply: FastifyReply): Promise<unknown> => {
    if (request.headers.upgrade?.toLowerCase() !== 'websocket') return
    const refusal = this.gate.admit(request)
    if (refusal !== null) return this.refuse(reply, refusal)
  }

  refuse (reply: FastifyReply, refusal: Refusal, err?: unknown): FastifyReply {
    this.log.debug({ err, reason: refusal.reason }, 'fastify-streams: handshake refused')
    this.metrics.refused(refusal.reason)
    return reply.code(refusal.status).send({ code: refusal.code, message: refusal.message })
  }

  /** Waits for `auth` at most `auth_timeout_ms`, and no longer than the client stays connected. */
  async within<T> (auth: Promise<T>, request: FastifyRequest): Promise<T> {
    const socket = request.raw.socket
    const ms = this.limits.authTimeoutMs
    let timer: NodeJS.Timeout | undefined
    let onGone: (() => void) | undefined
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new AuthTimeoutError(ms)), ms).unref()
      onGone = () => reject(CLIENT_GONE)
      // After the upgrade event nothing else watches this socket: its end only shows as 'end' (half-open).
      if (socket.readableEnded || socket.destroyed) onGone()
      socket.once('end', onGone)
      socket.once('close', onGone)
    })
    try {
      return await Promise.race([auth, deadline])
    } finally {
      clearTimeout(timer)
      socket.off('end', onGone!)
      socket.off('close', onGone!)
    }
  }

  /** Answers an error of `within` that is the guard's own (time-out, client gone); null for the auth's errors. */
  settle (err: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply | null {
    if (err === CLIENT_GONE) {
      // Nothing more is owed to a client that left: free its socket (and its place) now.
      request.raw.socket.destroy()
      return reply.hijack()
    }
    if (err instanceof AuthTimeoutError) return this.refuse(reply, { status: 503, code: err.code, reason: 'auth_timeout', message: 'Authentication timed out' }, err)
    return null
  }
}

/**
 * An app that registered @fastify/websocket itself may allow larger frames than `max_payload`: ws then checks
 * ours from each frame's header, before buffering its payload (0 means no limit in ws).
 */
export function capPayload (socket: WebSocket, maxPayload: number): void {
  const receiver = (socket as unknown as { _receiver?: { _maxPayload: number } })._receiver
  if (receiver !== undefined && (receiver._maxPayload === 0 || receiver._maxPayload > maxPayload)) receiver._maxPayload = maxPayload
}
