// The server process is killed (SIGKILL) while writes flow and readers (official client, SSE and long-poll) are
// attached, some dropped at random; it restarts on the same SQLite file / Redis. Every reader resumes from its
// offset without a new snapshot, ends equal to the group, and got the log (changes and custom events sent while
// it was away) exactly once and in order: the same entries a catch-up read of the persisted log answers.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { until } from '../helpers/app.js'
import { startRedisServer } from '../helpers/redis-server.js'
import { FeedReader, received, strictlyIncreasing, type FeedMessage } from './feeds-helpers.js'

const FIXTURE = fileURLToPath(new URL('../fixtures/feed-server.ts', import.meta.url))
const TS_LOADER = import.meta.resolve('@tapjs/typescript/import')

interface Server { child: ChildProcess, lines: string[], port: Promise<number>, exited: Promise<unknown> }

function startServer (args: string[]): Server {
  const child = spawn(process.execPath, [`--import=${TS_LOADER}`, FIXTURE, ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1' }
  })
  const lines: string[] = []
  let partial = ''
  let listening: (port: number) => void
  const port = new Promise<number>(resolve => { listening = resolve })
  child.stdout!.setEncoding('utf8')
  child.stdout!.on('data', (chunk: string) => {
    const parts = (partial + chunk).split('\n')
    partial = parts.pop()!
    for (const line of parts) {
      lines.push(line)
      if (line.startsWith('listening ')) listening(Number(line.slice(10)))
    }
  })
  const exited = new Promise(resolve => child.once('close', resolve))
  return { child, lines, port, exited }
}

const acks = (server: Server) => server.lines.filter(line => line.startsWith('ack ')).length

/** The whole log after `offset` as a plain catch-up reader reads it, page after page. */
async function catchUp (feed: string, offset: string): Promise<FeedMessage[]> {
  const messages: FeedMessage[] = []
  for (;;) {
    const response = await fetch(`${feed}?offset=${offset}`)
    if (response.status !== 200) throw new Error(`catch-up answered ${response.status}`)
    messages.push(...await response.json() as FeedMessage[])
    offset = response.headers.get('stream-next-offset')!
    if (response.headers.get('stream-up-to-date') === 'true') return messages
  }
}

async function scenario (t: Test, kind: 'sqlite' | 'redis', where: string): Promise<void> {
  let server = startServer([kind, where, '0', '1', '100000'])
  t.teardown(() => { server.child.kill('SIGKILL') })
  const port = await server.port
  const feed = `http://127.0.0.1:${port}/v1/groups/todo/crash`
  await until(() => acks(server) >= 20, 'the first writes', 20_000)

  const readers = Array.from({ length: 4 }, (_, i) => new FeedReader(feed, i % 2 === 0 ? 'sse' : 'long-poll'))
  await Promise.all(readers.map(async reader => await reader.start()))
  // Readers come and go while the writes flow.
  for (let round = 0; round < 6; round++) {
    const reader = readers[round % readers.length]
    await reader.stop()
    await until(() => acks(server) >= 30 + round * 15, 'more writes', 20_000)
    await reader.start()
  }
  await readers[0].stop() // one reader is away across the crash
  await until(() => acks(server) >= 150, 'more writes', 20_000)

  server.child.kill('SIGKILL')
  await server.exited
  server = startServer([kind, where, String(port), '2', '150'])
  await server.port
  await readers[0].start()
  await until(() => server.lines.includes('done'), 'the second run', 30_000)
  // A reader refused (410 …) will never see the marker: stop waiting for it, the checks below say why.
  await until(() => readers.every(reader => reader.failures.length > 0 || reader.tail.some(m => m.event?.type === 'marker')), 'the marker on every reader', 30_000)

  const snapshot = new FeedReader(feed, false)
  await snapshot.start()
  await until(() => snapshot.snapshotOffset !== null, 'a fresh snapshot')
  for (const [i, reader] of readers.entries()) {
    t.same(reader.failures, [], `reader ${i}: no terminal error (no 410 across the restart)`)
    t.equal(reader.snapshots, 1, `reader ${i}: one snapshot, then the log only`)
    t.same(reader.items('todo'), snapshot.items('todo'), `reader ${i}: ends equal to the group`)
    const log = await catchUp(feed, reader.snapshotOffset!)
    t.same(reader.tail.map(received), log.map(received), `reader ${i}: the log exactly once, in order`)
    t.ok(reader.tail.some(m => m.event?.type === 'tick'), `reader ${i}: custom events too`)
    t.ok(strictlyIncreasing(reader.offsets), `reader ${i}: offsets strictly increase`)
  }
  await Promise.all(readers.map(async reader => await reader.stop()))
  server.child.kill('SIGTERM')
  await server.exited
}

t.test('SQLite file', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'feeds-crash-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await scenario(t, 'sqlite', join(dir, 'streams.db'))
})

t.test('Redis', async t => {
  const redis = await startRedisServer()
  t.teardown(() => redis.close())
  await scenario(t, 'redis', redis.url)
})
