// The official client's IdempotentProducer keeps appending while the server process is killed (SIGKILL) and
// started again on the same port: with SQLite and with Redis every message is stored exactly once, in order.
// With Redis a live stream() reader on another node tails the messages as they come.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { DurableStream, IdempotentProducer, stream } from '@durable-streams/client'
import { serve } from '../helpers/app.js'
import { startRedisServer } from '../helpers/redis-server.js'

const FIXTURE = fileURLToPath(new URL('./durable-server.fixture.ts', import.meta.url))
const TS_LOADER = import.meta.resolve('@tapjs/typescript/import')
const MESSAGES = 400

/** The application's retry policy: a request that got no answer (the server was down) is sent again. */
const retryingFetch: typeof fetch = async (input, init) => {
  for (;;) {
    try {
      return await fetch(input, init)
    } catch {
      await new Promise(resolve => setTimeout(resolve, 20))
    }
  }
}

/** Starts the server process; resolves with it and its port once it listens. */
function startServer (adapter: unknown, port = 0): Promise<{ child: ChildProcess, port: number }> {
  const child = spawn(process.execPath, [`--import=${TS_LOADER}`, FIXTURE, JSON.stringify(adapter), String(port)], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1' }
  })
  return new Promise((resolve, reject) => {
    let out = ''
    child.stdout!.setEncoding('utf8')
    child.stdout!.on('data', (chunk: string) => {
      out += chunk
      const match = /listening (\d+)/.exec(out)
      if (match !== null) resolve({ child, port: Number(match[1]) })
    })
    child.once('exit', (code) => reject(new Error(`server exited with ${code}`)))
  })
}

function kill (child: ChildProcess): Promise<void> {
  return new Promise(resolve => {
    child.once('close', () => resolve())
    child.kill('SIGKILL')
  })
}

async function restartRun (tt: Test, adapter: unknown, otherNode?: string): Promise<void> {
  let server = await startServer(adapter)
  const port = server.port
  tt.teardown(() => { server.child.kill('SIGKILL') })
  const url = `http://127.0.0.1:${port}/v1/stream/jobs/1`
  const handle = await DurableStream.create({ url, contentType: 'application/json' })

  const tailed: unknown[] = []
  const tailDone = otherNode === undefined
    ? Promise.resolve()
    : new Promise<void>((resolve, reject) => {
      stream<{ n: number }>({ url: `${otherNode}/v1/stream/jobs/1`, offset: '-1', live: 'sse' }).then((response) => {
        response.subscribeJson(async (batch) => {
          tailed.push(...batch.items)
          if (tailed.length >= MESSAGES) {
            response.cancel()
            resolve()
          }
        })
      }, reject)
    })

  const errors: Error[] = []
  const producer = new IdempotentProducer(handle, 'worker-1', { lingerMs: 2, maxInFlight: 4, fetch: retryingFetch, onError: (err) => errors.push(err) })
  for (let n = 0; n < MESSAGES; n++) {
    producer.append(JSON.stringify({ n }))
    if (n === MESSAGES / 2) {
      // Kill the server with batches in flight, then bring it back on the same port.
      await new Promise(resolve => setTimeout(resolve, 5))
      await kill(server.child)
      server = await startServer(adapter, port)
    }
    if (n % 20 === 0) await new Promise(resolve => setImmediate(resolve))
  }
  await producer.flush()
  tt.same(errors, [], 'the producer reported no error')
  const stored = await (await fetch(url)).json()
  tt.same(stored, Array.from({ length: MESSAGES }, (_, n) => ({ n })), 'every message stored once, in order, across the kill')
  await tailDone
  if (otherNode !== undefined) tt.same(tailed, stored, 'the reader on the other node tailed them all, live')
  await kill(server.child)
}

t.test('SQLite: a producer survives a SIGKILL of the server', async (tt) => {
  const dir = await mkdtemp(join(tmpdir(), 'ds-restart-'))
  tt.teardown(() => rm(dir, { recursive: true, force: true }))
  await restartRun(tt, { class: 'modules::streams::adapters::KvStore', config: { store_method: 'file_based', file_path: join(dir, 'streams.db') } })
})

t.test('Redis: a producer survives a SIGKILL of one node; a reader on another node tails live', async (tt) => {
  const redis = await startRedisServer()
  tt.teardown(() => redis.close())
  const adapter = { class: 'modules::streams::adapters::RedisAdapter' as const, config: { redis_url: redis.url } }
  const other = await serve({ adapter, durable_streams: true })
  tt.teardown(() => other.app.close())
  await restartRun(tt, adapter, other.url.replace('ws://', 'http://').replace(/\/$/, ''))
})
