// fastify-streams: the plugin entry. Options are checked first; then the adapter is built and started, the
// `streams` decorator added, the WebSocket route served, and everything opened here closed with the app.
import { ServerResponse } from 'node:http'
import type { FastifyInstance, FastifyPluginAsync, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import websocket from '@fastify/websocket'
import type { WebSocket } from 'ws'
import type { StreamAdapter } from './adapters/adapter.js'
import { createKvAdapter } from './adapters/kv.js'
import { createStreamsApi, type StreamsApi } from './api.js'
import { CLOSE_GOING_AWAY, Connection, type ConnectionHost } from './connection.js'
import { AlreadyRegisteredError, InvalidAdapterError } from './errors.js'
import { Hub } from './hub.js'
import { durableStreamsRoutes } from './http/durable-streams.js'
import type { DurableStreamsApi } from './http/durable-api.js'
import { normalizeOptions, resolveDotted, type AuthFunction, type AuthInput, type NormalizedOptions, type StreamsOptions } from './options.js'
import type { Subscription } from './protocol.js'
import { Registry } from './registry.js'

export * from './errors.js'
export type { StreamsOptions, AuthInput, AuthFunction } from './options.js'
export type { StreamsApi, CustomEvent } from './api.js'
export type { DurableStreamsApi, DurableReadResult, DurableStreamInfo } from './http/durable-api.js'
export type { DurableStreamStore } from './http/store.js'
export type * from './adapters/adapter.js'
export type { UpdateOp, UpdateOpError } from './update-ops.js'
export type { FunctionRegistration, TriggerRegistration, Registered } from './registry.js'
export { createKvAdapter } from './adapters/kv.js'

export interface FastifyStreams extends StreamsApi {
  /** Closes every open stream socket with `code` (clients reconnect and re-sync). */
  dropConnections(code?: number): void
  /** Number of open stream sockets. */
  readonly connectionCount: number
  /** Durable streams without HTTP; present when the `durable_streams` option is on. */
  readonly durable?: DurableStreamsApi
}

declare module 'fastify' {
  interface FastifyInstance {
    streams: FastifyStreams
  }
}

const CONTEXT = Symbol('fastify-streams.context')
type AuthedRequest = FastifyRequest & { [CONTEXT]?: unknown }

const ADAPTER_METHODS = ['get', 'set', 'delete', 'getGroup', 'listGroups', 'listAll', 'update', 'publish', 'snapshotGroup', 'snapshotItem', 'subscribe', 'close']

/** Throws STREAMS_ERR_INVALID_ADAPTER naming every contract method `adapter` lacks. */
function checkAdapter (adapter: unknown, what: string): void {
  const missing = ADAPTER_METHODS.filter(method => typeof (adapter as Record<string, unknown> | null)?.[method] !== 'function')
  if (missing.length > 0) throw new InvalidAdapterError(`${what} an object without ${missing.join(', ')}`)
}

/** Returns the adapter, and whether it is ours to close (an adapter object the user passed in is borrowed). */
async function buildAdapter (options: NormalizedOptions): Promise<{ adapter: StreamAdapter, owned: boolean }> {
  const choice = options.adapter
  switch (choice.kind) {
    case 'instance':
      checkAdapter(choice.adapter, 'adapter is')
      return { adapter: choice.adapter, owned: false }
    case 'kv':
      return { adapter: createKvAdapter(choice), owned: true }
    case 'redis': {
      const { RedisAdapter } = await import('./adapters/redis.js')
      return { adapter: new RedisAdapter(choice), owned: true }
    }
    case 'custom': {
      const adapter = await choice.factory(choice.config)
      checkAdapter(adapter, `"${choice.name}" returned`)
      return { adapter, owned: true }
    }
  }
}

function authInput (request: FastifyRequest): AuthInput {
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

const plugin: FastifyPluginAsync<StreamsOptions> = async (app: FastifyInstance, rawOptions) => {
  if (app.hasDecorator('streams')) throw new AlreadyRegisteredError()
  const options = normalizeOptions(rawOptions)

  const { adapter, owned } = await buildAdapter(options)
  try {
    await adapter.start?.()
  } catch (err) {
    if (owned) await adapter.close().catch(() => {})
    throw err
  }

  const log = app.log
  const registry = new Registry()
  const hub = new Hub()
  const connections = new Set<Connection>()
  let closed = false
  const api = createStreamsApi({ adapter, registry, options, log, isClosed: () => closed })

  const stopFeed = adapter.subscribe((event) => hub.dispatch(event))
  const stopResync = adapter.onResync?.(() => { for (const connection of connections) connection.resync() })

  async function authenticate (input: AuthInput): Promise<unknown> {
    const auth = options.authFunction
    if (auth === null) return null
    let fn: unknown = auth
    if (typeof auth === 'string') {
      fn = registry.has(auth) ? (value: AuthInput) => registry.call(auth, value) : resolveDotted(app, auth)
      if (typeof fn !== 'function') throw new Error(`auth function "${auth}" is not registered`)
    }
    const result = await (fn as AuthFunction)(input)
    return result !== null && typeof result === 'object' && 'context' in result ? result.context ?? null : null
  }

  const host: ConnectionHost = {
    hub,
    adapter,
    options,
    log,
    async authorizeJoin (sub: Subscription, context: unknown): Promise<boolean> {
      const input = { subscription_id: sub.subscriptionId, stream_name: sub.streamName, group_id: sub.groupId, id: sub.id, context }
      for (const trigger of registry.triggersOf('join')) {
        try {
          const result = await registry.call(trigger.functionPath, input)
          if (result !== null && typeof result === 'object' && (result as { unauthorized?: unknown }).unauthorized === true) return false
        } catch (err) {
          log.warn({ err, function_path: trigger.functionPath }, 'fastify-streams: join trigger failed')
          if (options.joinFailure === 'deny') return false
        }
      }
      return true
    },
    async runLeave (sub: Subscription, context: unknown): Promise<void> {
      const input = { subscription_id: sub.subscriptionId, stream_name: sub.streamName, group_id: sub.groupId, id: sub.id, context }
      for (const trigger of registry.triggersOf('leave')) {
        try {
          await registry.call(trigger.functionPath, input)
        } catch (err) {
          log.warn({ err, function_path: trigger.functionPath }, 'fastify-streams: leave trigger failed')
        }
      }
    },
    forget: (connection) => { connections.delete(connection) }
  }

  function dropConnections (code = CLOSE_GOING_AWAY): void {
    for (const connection of [...connections]) connection.close(code, code === CLOSE_GOING_AWAY ? 'server closing' : 'dropped')
  }

  const streams: FastifyStreams = Object.defineProperties(api as FastifyStreams, {
    dropConnections: { value: dropConnections, enumerable: true },
    connectionCount: { get: () => connections.size, enumerable: true }
  })
  app.decorate('streams', streams)

  if (!app.hasPlugin('@fastify/websocket')) {
    await app.register(websocket, {
      options: {
        maxPayload: options.maxPayload,
        // Browsers drop a socket whose server echoes no subprotocol; the token itself is never echoed.
        handleProtocols: (protocols: Set<string>) => protocols.has('Authorization') ? 'Authorization' : ([...protocols][0] ?? false)
      },
      // @fastify/websocket's own preClose runs before ours and closes every socket without a code (1005):
      // close them as going away (1001) instead, ours first so their leave triggers run.
      preClose (done) {
        closed = true
        dropConnections(CLOSE_GOING_AWAY)
        const server = this.websocketServer
        for (const client of server.clients) client.close(CLOSE_GOING_AWAY, 'server closing')
        server.close(() => done())
      }
    })
  }

  app.route({
    method: 'GET',
    url: options.path,
    preValidation: async (request: AuthedRequest, reply) => {
      try {
        // No auth function, no auth input: reading the peer address would keep it on every idle socket.
        request[CONTEXT] = options.authFunction === null ? null : await authenticate(authInput(request))
      } catch (err) {
        if (options.authFailure === 'anonymous') {
          log.debug({ err }, 'fastify-streams: auth failed, connecting anonymously')
          request[CONTEXT] = null
          return
        }
        log.debug({ err }, 'fastify-streams: auth failed')
        return reply.code(401).send({ code: 'STREAMS_ERR_UNAUTHORIZED', message: 'Authentication failed' })
      }
    },
    handler: async (_request, reply) => reply.code(404).send({ code: 'STREAMS_ERR_NOT_WEBSOCKET', message: 'Connect with a WebSocket' }),
    wsHandler: (socket: WebSocket, request: AuthedRequest) => {
      if (closed) {
        socket.close(CLOSE_GOING_AWAY, 'server closing')
        return
      }
      // The upgrade's request and reply would live as long as the socket (kilobytes per idle connection):
      // @fastify/websocket's error listener holds them, and so does the TCP socket through the placeholder
      // HTTP response it was given. Neither is used after the upgrade; the connection's own listener takes over.
      socket.removeAllListeners('error')
      const tcp = (socket as unknown as { _socket?: { _httpMessage?: unknown } })._socket
      if (tcp?._httpMessage instanceof ServerResponse) tcp._httpMessage = null
      connections.add(new Connection(socket, request[CONTEXT] ?? null, host))
    }
  })

  if (options.durableStreams !== null) await app.register(durableStreamsRoutes, { settings: options.durableStreams, authenticate: async (request) => options.authFunction === null ? null : await authenticate(authInput(request)), authFailure: options.authFailure, authConfigured: options.authFunction !== null, registry, adapterChoice: options.adapter, adapter, streams })

  app.addHook('preClose', async () => {
    closed = true
    dropConnections(CLOSE_GOING_AWAY)
  })
  app.addHook('onClose', async () => {
    stopFeed()
    stopResync?.()
    if (owned) await adapter.close()
  })
}

export const fastifyStreams = fp(plugin, { name: 'fastify-streams', fastify: '5.x' })
export default fastifyStreams
