// The few places where the plugin reaches under the `ws` and node:http public APIs, kept together so a
// version bump has one file to check: frames written straight to the TCP socket, the upgrade's request
// released once the socket is open, and a start-time probe that those internals are still there.
// The `ws` range in package.json is the one these were tested with.
import { IncomingMessage, ServerResponse } from 'node:http'
import { Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { WebSocket } from 'ws'
import { WsInternalsError } from './errors.js'

/** The ws internal the send path uses: the stream under a WebSocket (a TCP socket, or a duplex in injectWS). */
type WithStream = { _socket?: { write(chunk: Buffer): boolean, cork(): void, uncork(): void, _httpMessage?: unknown } }

/**
 * Writes complete, unmasked text frames (see textFrame) straight to the socket's stream, in one go: the same
 * bytes go to every subscriber, instead of ws framing them again per socket. ws's own control frames still
 * go through ws, whose writes land on the same stream in order.
 */
export function writeFrames (socket: WebSocket, frames: Buffer | Buffer[]): void {
  const stream = (socket as unknown as WithStream)._socket
  if (stream === undefined) return
  if (Buffer.isBuffer(frames)) {
    stream.write(frames)
    return
  }
  stream.cork()
  for (const frame of frames) stream.write(frame)
  stream.uncork()
}

/**
 * Lets the upgrade's request and reply go once the socket is open: they would otherwise live as long as the
 * socket (kilobytes per idle connection). The TCP socket keeps the placeholder HTTP response it was given
 * (through `_httpMessage`), and @fastify/websocket's error listener, the last one added before the route's
 * handler runs, holds both. That listener is removed only when `upgradeListener` says it is the default one
 * (the plugin registered @fastify/websocket itself); error listeners the app added are always kept.
 */
export function releaseUpgrade (socket: WebSocket, upgradeListener: 'default' | 'app'): void {
  const stream = (socket as unknown as WithStream)._socket
  if (stream?._httpMessage instanceof ServerResponse) stream._httpMessage = null
  if (upgradeListener !== 'default') return
  const listeners = socket.listeners('error')
  const last = listeners[listeners.length - 1]
  if (last !== undefined) socket.removeListener('error', last as (...args: unknown[]) => void)
}

/**
 * The class the app's sockets will be: the one the app's @fastify/websocket server makes them with when the
 * app registered it, else the `ws` this package depends on (which the plugin's own registration uses).
 */
export function socketClassOf (app: FastifyInstance): typeof WebSocket {
  if (!app.hasDecorator('websocketServer')) return WebSocket
  return (app.websocketServer as { options?: { WebSocket?: typeof WebSocket } }).options?.WebSocket ?? WebSocket
}

/**
 * Checks at start that the internals above exist in the `ws` and Node versions at hand, so a version that
 * moved them fails at register with STREAMS_ERR_WS_INTERNALS rather than on the first frame.
 */
export function checkWsInternals (WebSocketClass: typeof WebSocket): void {
  const stream = new Socket()
  try {
    const response = new ServerResponse(new IncomingMessage(stream))
    response.assignSocket(stream)
    if ((stream as unknown as { _httpMessage?: unknown })._httpMessage !== response) throw new WsInternalsError('node:http no longer keeps the response at socket._httpMessage')
    response.detachSocket(stream)
    const probe = new WebSocketClass(null as unknown as string, undefined, {}) as WebSocket & { setSocket?: (socket: Socket, head: Buffer, options: object) => void }
    if (typeof probe.setSocket !== 'function') throw new WsInternalsError('ws has no WebSocket#setSocket')
    probe.setSocket(stream, Buffer.alloc(0), { maxPayload: 0 })
    if ((probe as unknown as WithStream)._socket !== stream) throw new WsInternalsError('ws no longer keeps its stream at websocket._socket')
  } finally {
    stream.destroy()
  }
}

/** What the outbox flushes: a socket with frames queued in this turn. */
export interface Flushable { flush(): void }

/**
 * Sockets with frames queued in this turn of the event loop, flushed together once the turn ends. One per
 * plugin instance: two apps in one process do not share it.
 */
export class Outbox {
  private readonly queued = new Set<Flushable>()
  private scheduled = false
  private readonly flushAll = (): void => {
    this.scheduled = false
    for (const target of this.queued) target.flush()
    this.queued.clear()
  }

  add (target: Flushable): void {
    this.queued.add(target)
    if (this.scheduled) return
    this.scheduled = true
    setImmediate(this.flushAll)
  }
}
