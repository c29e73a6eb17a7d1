// fastify-streams: the plugin entry. Options are checked first; then the adapter is built and started, the
// `streams` decorator added, the WebSocket route served, and everything opened here closed with the app.
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import websocket from '@fastify/websocket'
import type { WebSocket } from 'ws'
import { buildAdapter } from './adapters/build.js'
import { createStreamsApi, type StreamsApi } from './api.js'
import { createSocketAuth } from './auth.js'
import { CLOSE_GOING_AWAY, Connection, type ConnectionHost } from './connection.js'
import { AlreadyRegisteredError } from './errors.js'
import { adapterName, BackendMonitor, healthRoute, metricsRoute } from './health.js'
import { Heartbeat } from './heartbeat.js'
import { Hub } from './hub.js'
import { durableStreamsRoutes } from './http/durable-streams.js'
import type { DurableStreamsApi } from './http/durable-api.js'
import { registerFeeds, type Feeds } from './http/feeds.js'
import { capPayload, HandshakeGuard } from './limits.js'
import { metricsFor } from './metrics.js'
import { normalizeOptions, type StreamsOptions } from './options.js'
import { Registry } from './registry.js'
import { Triggers } from './triggers.js'
import { checkWsInternals, Outbox, releaseUpgrade, socketClassOf } from './ws.js'

export * from './errors.js'
export type { StreamsOptions, AuthInput, AuthResult, AuthFunction } from './options.js'
export type { StreamsApi, CustomEvent } from './api.js'
export type { DurableStreamsApi, DurableReadResult, DurableStreamInfo } from './http/durable-api.js'
export type { DurableStreamStore } from './http/store.js'
export type * from './adapters/adapter.js'
export type { UpdateOp, UpdateOpError } from './update-ops.js'
export type { FunctionRegistration, TriggerRegistration, Registered } from './registry.js'
export type * from './types.js'
export { createKvAdapter } from './adapters/kv.js'
export { createRedisAdapter } from './adapters/build.js'
export type { KvAdapterConfig } from './adapters/kv-config.js'
export type { RedisAdapterConfig } from './adapters/redis-config.js'
export type { ChangeLogOptions } from './adapters/change-log-config.js'

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

const plugin: FastifyPluginAsync<StreamsOptions> = async (app: FastifyInstance, rawOptions) => {
  if (app.hasDecorator('streams')) throw new AlreadyRegisteredError()
  const options = normalizeOptions(rawOptions)
  checkWsInternals(socketClassOf(app))

  const { adapter: rawAdapter, owned } = await buildAdapter(options.adapter)
  try {
    await rawAdapter.start?.()
  } catch (err) {
    if (owned) await rawAdapter.close().catch(() => {})
    throw err
  }

  const log = app.log
  const registry = new Registry()
  const triggers = new Triggers(registry, options, log)
  const hub = new Hub()
  const outbox = new Outbox()
  const connections = new Set<Connection>()
  let closed = false
  const metrics = await metricsFor(options.operations, {
    sockets: () => connections.size,
    subscriptions: () => { let count = 0; for (const connection of connections) count += connection.subscriptionCount; return count },
    skippedItems: () => rawAdapter.skippedItems ?? 0
  })
  const monitor = new BackendMonitor(adapterName(options.adapter), log, metrics)
  const adapter = monitor.wrap(rawAdapter)
  const { api, syncState } = createStreamsApi({ adapter, registry, triggers, options, isClosed: () => closed })
  const guard = new HandshakeGuard(options.limits, log, metrics)
  const auth = createSocketAuth({ app, registry, options, log, guard })
  const heartbeat = new Heartbeat(options.limits.pingIntervalMs, (id) => log.debug({ socket: id }, 'fastify-streams: closing a socket that missed its pong'))

  let feeds: Feeds | null = null
  const stopFeed = adapter.subscribe((event) => hub.dispatch(event, feeds?.offsetOf(event)))
  const stopResync = adapter.onResync?.(() => {
    monitor.reconnected()
    for (const connection of connections) connection.resync()
  })

  const host: ConnectionHost = {
    hub,
    outbox,
    options,
    log,
    metrics,
    triggers,
    syncState,
    forget: (connection) => { connections.delete(connection) }
  }

  if (options.feeds !== null) feeds = registerFeeds(app, { adapter, options, log, auth, authorizeJoin: (sub, context) => triggers.authorizeJoin(sub, context) })

  function dropConnections (code = CLOSE_GOING_AWAY): void {
    for (const connection of [...connections]) connection.close(code, code === CLOSE_GOING_AWAY ? 'server closing' : 'dropped')
  }

  const streams: FastifyStreams = Object.defineProperties(api as FastifyStreams, {
    dropConnections: { value: dropConnections, enumerable: true },
    connectionCount: { get: () => connections.size, enumerable: true }
  })
  app.decorate('streams', streams)

  // @fastify/websocket's error listener on each socket is its default one only when the plugin registered it.
  const upgradeListener = app.hasPlugin('@fastify/websocket') ? 'app' : 'default'
  if (upgradeListener === 'default') {
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

  const { healthPath, metricsPath } = options.operations
  if (healthPath !== null) healthRoute(app, healthPath, monitor, adapter, () => connections.size, () => closed)
  if (metricsPath !== null) metricsRoute(app, metricsPath, metrics)

  app.route({
    method: 'GET',
    url: options.path,
    onRequest: guard.onRequest,
    preValidation: auth.preValidation,
    handler: async (_request, reply) => reply.code(404).send({ code: 'STREAMS_ERR_NOT_WEBSOCKET', message: 'Connect with a WebSocket' }),
    wsHandler: (socket: WebSocket, request) => {
      if (closed) {
        socket.close(CLOSE_GOING_AWAY, 'server closing')
        return
      }
      releaseUpgrade(socket, upgradeListener)
      capPayload(socket, options.maxPayload)
      const connection = new Connection(socket, auth.contextOf(request), host)
      connections.add(connection)
      heartbeat.watch(socket, connection.id)
      log.debug({ socket: connection.id }, 'fastify-streams: connect')
    }
  })

  app.addHook('onReady', async () => { auth.checkConfigured() })
  if (options.durableStreams !== null) await app.register(durableStreamsRoutes, { settings: options.durableStreams, auth, authConfigured: options.authFunction !== null, registry, adapter, streams })
  app.addHook('preClose', async () => {
    closed = true
    dropConnections(CLOSE_GOING_AWAY)
  })
  app.addHook('onClose', async () => {
    heartbeat.stop()
    stopFeed()
    stopResync?.()
    if (owned) await rawAdapter.close()
  })
}

export const fastifyStreams = fp(plugin, { name: 'fastify-streams', fastify: '5.x' })
export default fastifyStreams
