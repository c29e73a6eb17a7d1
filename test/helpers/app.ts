// Shared test fixtures: a real Fastify app with the plugin on port 0, and a raw ws client.
import Fastify, { type FastifyInstance } from 'fastify'
import { WebSocket } from 'ws'
import streams, { type StreamsOptions } from '../../lib/index.js'

// The suite's one polling wait lives in wait.ts; `until` is the same function under its older name.
import { waitFor } from './wait.js'
export { waitFor, waitFor as until }

export interface Served { app: FastifyInstance, url: string }

/** One line the app logged (pino JSON), when `serve` is given an array to collect them. */
export interface LogLine { level: number, msg: string, [key: string]: unknown }
export const WARN = 40

export async function serve (options: StreamsOptions = {}, setup?: (app: FastifyInstance) => void | Promise<void>, logs?: LogLine[]): Promise<Served> {
  const logger = logs === undefined ? false : { level: 'debug', stream: { write: (line: string) => { logs.push(JSON.parse(line)) } } }
  const app = Fastify({ logger, forceCloseConnections: true })
  await app.register(streams, options)
  await setup?.(app)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  return { app, url: `ws://127.0.0.1:${address.port}/` }
}

export interface Envelope {
  type: string
  timestamp: number
  streamName: string
  groupId: string
  id: string | null
  rev?: number
  event: { type: string, data?: any, event?: { type: string, data: any } }
}

/** A raw protocol client that records every frame it gets. */
export class RawClient {
  readonly frames: Envelope[] = []
  readonly socket: WebSocket
  closeCode: number | null = null
  private counter = 0

  constructor (url: string, protocols?: string[], headers?: Record<string, string>) {
    this.socket = new WebSocket(url, protocols, { headers })
    this.socket.on('message', (data) => { this.frames.push(JSON.parse(data.toString())) })
    this.socket.on('close', (code) => { this.closeCode = code })
    this.socket.on('error', () => {})
  }

  static async open (url: string, protocols?: string[], headers?: Record<string, string>): Promise<RawClient> {
    const client = new RawClient(url, protocols, headers)
    await new Promise<void>((resolve, reject) => {
      client.socket.once('open', () => resolve())
      client.socket.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { statusCode: res.statusCode })))
      client.socket.once('error', reject)
    })
    return client
  }

  join (streamName: string, groupId: string, id?: string, subscriptionId = `sub-${++this.counter}`): string {
    this.socket.send(JSON.stringify({ type: 'join', data: { streamName, groupId, ...(id === undefined ? {} : { id }), subscriptionId } }))
    return subscriptionId
  }

  leave (streamName: string, groupId: string, subscriptionId: string, id?: string): void {
    this.socket.send(JSON.stringify({ type: 'leave', data: { streamName, groupId, ...(id === undefined ? {} : { id }), subscriptionId } }))
  }

  of (type: string): Envelope[] {
    return this.frames.filter(frame => frame.event.type === type)
  }

  async close (): Promise<void> {
    if (this.socket.readyState === WebSocket.CLOSED) return
    await new Promise<void>(resolve => {
      this.socket.once('close', () => resolve())
      this.socket.close()
    })
  }
}

/** The custom event type `marked` sends. */
export const MARKER = 'fastify-streams-test-marker'

/**
 * Sends a marker event to (stream, group[, id]), which `client` must have joined, and waits until it arrives: every
 * frame sent to the socket before it has arrived by then, so a test can assert that nothing more came
 * without waiting a fixed time. The marker frame is taken out of `client.frames`.
 */
export async function marked (app: FastifyInstance, client: RawClient, stream: string, group: string, id?: string): Promise<void> {
  await app.streams.send(stream, group, { type: MARKER }, id)
  await waitFor(() => client.frames.some(isMarker), `the marker in ${stream}/${group}`)
  client.frames.splice(0, client.frames.length, ...client.frames.filter(frame => !isMarker(frame)))
}

function isMarker (frame: Envelope): boolean {
  return frame.event.type === 'event' && frame.event.event?.type === MARKER
}
