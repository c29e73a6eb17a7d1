// Shared test fixtures: a real Fastify app with the plugin on port 0, raw ws clients, and polling waits.
import Fastify, { type FastifyInstance } from 'fastify'
import { WebSocket } from 'ws'
import streams, { type StreamsOptions } from '../../lib/index.js'

export interface Served { app: FastifyInstance, url: string }

export async function serve (options: StreamsOptions = {}, setup?: (app: FastifyInstance) => void | Promise<void>): Promise<Served> {
  const app = Fastify({ logger: false, forceCloseConnections: true })
  await app.register(streams, options)
  await setup?.(app)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  return { app, url: `ws://127.0.0.1:${address.port}/` }
}

/** Polls `check` until it returns true or `ms` pass; rejects with `what` on time-out. */
export async function until (check: () => boolean | Promise<boolean>, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 10))
  }
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
