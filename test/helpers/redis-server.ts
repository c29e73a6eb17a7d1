// Starts a real, throw-away redis-server on a free port for tests (never the one at 6379).
// `stop()` kills it (the port stays reserved for `restart()`), `close()` stops it and removes its directory.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort, waitFor } from './wait.js'

export const REDIS_SERVER_BIN = process.env.REDIS_SERVER_BIN ?? '/usr/bin/redis-server'

export interface RedisServer {
  url: string
  port: number
  /** Stops the server (SIGTERM, then SIGKILL after 2 s) and waits for it to exit. */
  stop(): Promise<void>
  /** Starts it again on the same port (stopping it first if it runs); waits until it answers PING. */
  restart(): Promise<void>
  /** Stops the server and removes its directory; idempotent. */
  close(): Promise<void>
  /** Freezes the server (SIGSTOP): connections stay open, nothing answers. */
  pause(): void
  /** Thaws a paused server (SIGCONT). */
  resume(): void
  /** Sends one command (inline protocol) on a fresh socket and returns the raw reply text. */
  command(...args: string[]): Promise<string>
}

function encode (args: string[]): string {
  return `*${args.length}\r\n` + args.map((arg) => `$${Buffer.byteLength(arg)}\r\n${arg}\r\n`).join('')
}

/** Sends one command and collects the reply until it looks complete (enough for PING, INFO, CONFIG). */
function rawCommand (port: number, args: string[], timeoutMs = 1000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    let data = ''
    const timer = setTimeout(() => { socket.destroy(); reject(new Error(`redis-server on ${port}: no reply to ${args[0]}`)) }, timeoutMs)
    timer.unref()
    const finish = (err?: Error) => {
      clearTimeout(timer)
      socket.destroy()
      if (err) reject(err)
      else resolve(data)
    }
    socket.on('connect', () => socket.write(encode(args)))
    socket.on('data', (chunk) => {
      data += chunk.toString('utf8')
      if (complete(data)) finish()
    })
    socket.on('error', (err) => finish(err))
    socket.on('close', () => finish(new Error(`redis-server on ${port}: connection closed`)))
  })
}

function complete (reply: string): boolean {
  if (reply.length < 3 || !reply.includes('\r\n')) return false
  if (reply[0] !== '$') return reply.endsWith('\r\n')
  const header = reply.indexOf('\r\n')
  const length = Number(reply.slice(1, header))
  if (length < 0) return true
  return Buffer.byteLength(reply) >= header + 2 + length + 2
}

/** Extracts the payload of a bulk or simple string reply. */
export function replyText (reply: string): string {
  if (reply[0] === '$') return reply.slice(reply.indexOf('\r\n') + 2, -2)
  return reply.slice(1, -2)
}

export async function startRedisServer (): Promise<RedisServer> {
  const dir = await mkdtemp(join(tmpdir(), 'fastify-streams-redis-'))
  const port = await freePort()
  let child: ChildProcess | null = null
  let exited: Promise<void> = Promise.resolve()
  let closed = false
  let stderr = ''

  async function launch (): Promise<void> {
    stderr = ''
    const proc = spawn(REDIS_SERVER_BIN, [
      '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--dir', dir, '--daemonize', 'no', '--loglevel', 'warning'
    ], { stdio: ['ignore', 'ignore', 'pipe'] })
    child = proc
    proc.stderr?.setEncoding('utf8')
    proc.stderr?.on('data', (chunk: string) => { stderr = (stderr + chunk).slice(-4000) })
    exited = new Promise((resolve) => {
      proc.once('exit', () => resolve())
      proc.once('error', (err) => { stderr += String(err); resolve() })
    })
    const answers = async (): Promise<boolean> => {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error('redis-server exited')
      return (await rawCommand(port, ['PING'], 500).catch(() => '')).startsWith('+PONG')
    }
    try {
      await waitFor(answers, 'redis-server to answer PING', 10_000)
    } catch {
      await stop()
      throw new Error(`redis-server did not start on port ${port}: ${stderr}`)
    }
  }

  async function stop (): Promise<void> {
    const proc = child
    if (proc === null) return
    child = null
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGCONT')
      proc.kill('SIGTERM')
      const timer = setTimeout(() => proc.kill('SIGKILL'), 2000)
      await exited
      clearTimeout(timer)
    }
  }

  await launch()
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    stop,
    async restart () {
      if (closed) throw new Error('redis-server helper is closed')
      await stop()
      await launch()
    },
    async close () {
      if (closed) return
      closed = true
      await stop()
      await rm(dir, { recursive: true, force: true })
    },
    pause () { child?.kill('SIGSTOP') },
    resume () { child?.kill('SIGCONT') },
    command: (...args: string[]) => rawCommand(port, args)
  }
}

/** How many keys of `server` start with `prefix` (what an adapter under that prefix leaves in Redis). */
export async function keyCount (server: RedisServer, prefix: string): Promise<number> {
  const { Redis } = await import('ioredis')
  const client = new Redis(server.url)
  try {
    return (await client.keys(`${prefix}*`)).length
  } finally {
    client.disconnect()
  }
}
