// Socket auth: the engine's auth input built from the upgrade request, the auth function resolved at
// connection time (a registry path, a dotted decorator path, or a function), and the refusals it leads to,
// said once at start-up when the configured path names nothing and logged (rate-limited) for each 401.
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { resolveDotted, type AuthFunction, type AuthInput, type NormalizedOptions } from './options.js'
import type { HandshakeGuard } from './limits.js'
import type { Registry } from './registry.js'

/** At most one warning per this many ms about refused sockets; the others are counted in the next one. */
export const UNAUTHORIZED_LOG_INTERVAL_MS = 10_000

const CONTEXT = Symbol('fastify-streams.context')
type AuthedRequest = FastifyRequest & { [CONTEXT]?: unknown }

/** The engine's StreamAuthInput for an upgrade request. */
export function authInput (request: FastifyRequest): AuthInput {
  const headers: Record<string, string> = {}
  for (const [name, value] of Object.entries(request.headers)) {
    if (value !== undefined) headers[name.toLowerCase()] = Array.isArray(value) ? value[0] : value
  }
  // Everything after the first '?' is the query (a value may itself contain '?').
  const mark = request.url.indexOf('?')
  const path = mark < 0 ? request.url : request.url.slice(0, mark)
  const query = mark < 0 ? '' : request.url.slice(mark + 1)
  // As the engine does: split on '&' then the first '='; values are not percent-decoded.
  const queryParams: Record<string, string[]> = Object.create(null)
  for (const pair of query.split('&')) {
    const at = pair.indexOf('=')
    const key = at < 0 ? pair : pair.slice(0, at)
    if (key === '') continue
    ;(queryParams[key] ??= []).push(at < 0 ? '' : pair.slice(at + 1))
  }
  const { remoteAddress = '', remotePort = 0 } = request.raw.socket
  const addr = remoteAddress.includes(':') ? `[${remoteAddress}]:${remotePort}` : `${remoteAddress}:${remotePort}`
  return { headers, path, query_params: queryParams, addr }
}

interface AuthHost {
  app: FastifyInstance
  registry: Registry
  options: NormalizedOptions
  log: FastifyBaseLogger
  /** Bounds the auth function's time and counts refusals. */
  guard: Pick<HandshakeGuard, 'within' | 'settle' | 'refuse'>
}

/** Why a socket was refused, in our own words: a coded error's message, or the auth function's error message. */
class Refusal extends Error {}

export interface SocketAuth {
  /**
   * Runs the auth function on a request within `auth_timeout_ms` and sets its auth context, or answers the
   * refusal itself (401, 503 past the deadline, nothing for a client gone). The one auth step of every route:
   * the socket's and the feeds' preValidation hook, the durable streams' onRequest hook (which checks
   * `reply.sent` after it).
   */
  preValidation(request: FastifyRequest, reply: FastifyReply): Promise<unknown>
  /** The auth context the preValidation hook set for `request` (null: anonymous). */
  contextOf(request: FastifyRequest): unknown
  /** Warns when the configured auth path names neither a registered function nor a decorator (call once ready). */
  checkConfigured(): void
}

export function createSocketAuth ({ app, registry, options, log, guard }: AuthHost): SocketAuth {
  const auth = options.authFunction
  let refusedSinceLog = 0
  let lastLog = -Infinity

  function resolve (): AuthFunction {
    if (typeof auth === 'function') return auth
    const path = auth as string
    if (registry.has(path)) return (input) => registry.call(path, input) as ReturnType<AuthFunction>
    const fn = resolveDotted(app, path)
    if (typeof fn !== 'function') throw new Refusal(`auth function "${path}" is neither registered nor a decorator`)
    return fn as AuthFunction
  }

  async function authenticate (request: FastifyRequest): Promise<unknown> {
    const fn = resolve()
    let result: Awaited<ReturnType<AuthFunction>>
    try {
      result = await fn(authInput(request))
    } catch (err) {
      const code = (err as { code?: unknown })?.code
      throw new Refusal(`the auth function failed: ${typeof code === 'string' ? `${code} ` : ''}${(err as Error)?.message ?? String(err)}`)
    }
    return result !== null && typeof result === 'object' && 'context' in result ? result.context ?? null : null
  }

  /** One warning per UNAUTHORIZED_LOG_INTERVAL_MS, carrying how many refusals it stands for. */
  function logRefusal (reason: string, request: FastifyRequest): void {
    refusedSinceLog++
    const now = Date.now()
    if (now - lastLog < UNAUTHORIZED_LOG_INTERVAL_MS) return
    // The same hook guards the socket's upgrade, the feeds and the durable streams: say which was refused.
    const what = request.headers.upgrade?.toLowerCase() === 'websocket' ? 'a socket' : `a request (${request.method} ${request.url.split('?')[0]})`
    log.warn({ reason, refused: refusedSinceLog }, `fastify-streams: refused ${what} (401)`)
    lastLog = now
    refusedSinceLog = 0
  }

  return {
    async preValidation (request, reply) {
      // No auth function, no auth input: reading the peer address would keep it on every idle socket.
      if (auth === null) {
        (request as AuthedRequest)[CONTEXT] = null
        return
      }
      try {
        (request as AuthedRequest)[CONTEXT] = await guard.within(authenticate(request), request)
      } catch (err) {
        const settled = guard.settle(err, request, reply)
        if (settled !== null) return settled
        const reason = err instanceof Refusal ? err.message : String(err)
        if (options.authFailure === 'anonymous') {
          log.debug({ reason }, 'fastify-streams: auth failed, connecting anonymously')
          ;(request as AuthedRequest)[CONTEXT] = null
          return
        }
        logRefusal(reason, request)
        return guard.refuse(reply, { status: 401, code: 'STREAMS_ERR_UNAUTHORIZED', reason: 'auth', message: 'Authentication failed' })
      }
    },

    contextOf: (request) => (request as AuthedRequest)[CONTEXT] ?? null,

    checkConfigured () {
      if (typeof auth !== 'string' || registry.has(auth) || typeof resolveDotted(app, auth) === 'function') return
      log.warn({ auth_function: auth }, `fastify-streams: auth_function "${auth}" is neither a registered function nor a decorator: every socket will get 401 until it is registered`)
    }
  }
}
