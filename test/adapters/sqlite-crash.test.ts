// A server process writing continuously to a SQLite file (KvStore file_based) is killed with SIGKILL; the next
// process on the same file finds every write acknowledged before the kill, with its value, in insertion order,
// and the group's change log holds every acknowledged change, in order, with no gap.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import type { ChangeRecord } from '../../lib/adapters/adapter.js'
import { waitFor } from '../helpers/wait.js'

const FIXTURE = fileURLToPath(new URL('../fixtures/sqlite-writer.ts', import.meta.url))
// The TypeScript loader tap itself runs tests with, resolved from here (no absolute path baked in).
const TS_LOADER = import.meta.resolve('@tapjs/typescript/import')

interface Ack { id: string, n: number }
type Item = { id: string, n: number, run: number }

function start (args: string[]): { child: ChildProcess, lines: string[], exited: Promise<number | string | null>, stderr: () => string } {
  const child = spawn(process.execPath, [`--import=${TS_LOADER}`, FIXTURE, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1' }
  })
  const lines: string[] = []
  let partial = ''
  let stderr = ''
  child.stdout!.setEncoding('utf8')
  child.stdout!.on('data', (chunk: string) => {
    const parts = (partial + chunk).split('\n')
    partial = parts.pop()!
    lines.push(...parts)
  })
  child.stderr!.setEncoding('utf8')
  child.stderr!.on('data', (chunk: string) => { stderr = (stderr + chunk).slice(-4000) })
  // 'close': the process is gone and its stdout fully read.
  const exited = new Promise<number | string | null>(resolve => child.once('close', (code, signal) => resolve(signal ?? code)))
  return { child, lines, exited, stderr: () => stderr }
}

/** Runs a writer until it acknowledged at least `minAcks` writes and ran `ms`, then SIGKILLs it. */
async function writeThenKill (t: Test, file: string, run: number, ms: number): Promise<{ acks: Ack[], counter: number }> {
  const writer = start(['write', file, String(run)])
  t.teardown(() => { if (writer.child.exitCode === null && writer.child.signalCode === null) writer.child.kill('SIGKILL') })
  await waitFor(() => writer.lines.includes('ready'), `writer ${run} to start (${writer.stderr()})`, 15_000)
  await new Promise(resolve => setTimeout(resolve, ms))
  writer.child.kill('SIGKILL')
  t.equal(await writer.exited, 'SIGKILL', `writer ${run} was killed with SIGKILL`)
  const acks: Ack[] = []
  let counter = 0
  for (const line of writer.lines) {
    const match = /^ack (\S+) (\d+)$/.exec(line)
    if (match === null) continue
    if (match[1] === 'counter') counter = Number(match[2])
    else acks.push({ id: match[1], n: Number(match[2]) })
  }
  t.ok(acks.length > 50, `writer ${run} acknowledged ${acks.length} writes before the kill`)
  return { acks, counter }
}

interface Dump { log: Item[], counter: { hits: number } | null, changes: ChangeRecord[], trimmed: number, rev: number }

async function dump (file: string): Promise<Dump> {
  const reader = start(['dump', file])
  const status = await reader.exited
  if (status !== 0) throw new Error(`dump exited with ${String(status)}: ${reader.stderr()}`)
  return JSON.parse(reader.lines[0])
}

t.test('every write acknowledged before a SIGKILL is in the file, in order, for the next process', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'streams-crash-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'data', 'streams_store.db')

  const acked: Ack[] = []
  let counter = 0
  // Two crash cycles on one file: the second writer starts from what the first left behind.
  for (const [run, ms] of [[0, 1500], [1, 1000]]) {
    const result = await writeThenKill(t, file, run, ms)
    acked.push(...result.acks)
    counter = Math.max(counter, result.counter)
  }

  const { log, counter: storedCounter, changes, trimmed, rev } = await dump(file)
  const events = acked.filter(a => a.id.startsWith('event-'))
  acked.splice(0, acked.length, ...acked.filter(a => !a.id.startsWith('event-')))
  const stored = new Map(log.map((item, index) => [item.id, { item, index }]))
  const missing = acked.filter(a => !stored.has(a.id))
  t.same(missing, [], `every acknowledged write is there (${acked.length} acknowledged, ${log.length} stored)`)
  const wrong = acked.filter(a => stored.has(a.id) && stored.get(a.id)!.item.n !== a.n)
  t.same(wrong, [], 'each with the acknowledged value')
  const positions = acked.map(a => stored.get(a.id)?.index ?? -1)
  t.ok(positions.every((p, i) => i === 0 || p > positions[i - 1]), 'getGroup lists them in the order they were acknowledged')
  // At most the writes in flight at each kill (one sequential or four concurrent) may be there unacknowledged.
  t.ok(log.length - acked.length <= 2 * 4, `only writes in flight at a kill are there unacknowledged (${log.length - acked.length})`)
  t.ok(storedCounter !== null && storedCounter.hits >= counter && storedCounter.hits <= counter + 2,
    `the update counter holds at least the last acknowledged value (${storedCounter?.hits} vs ${counter})`)

  t.equal(trimmed, 0, 'nothing trimmed from the log')
  t.same(changes.map(c => c.rev), Array.from({ length: rev }, (_, i) => i + 1), `the log holds revisions 1..${rev} with no gap`)
  // Writes by item id and value; custom events as event-r<run>-<n>, from their data.
  const key = (c: ChangeRecord): string => c.event.type === 'event'
    ? `event-r${(c.event.event.data as Item).run}-${(c.event.event.data as Item).n} ${(c.event.event.data as Item).n}`
    : `${c.id} ${(c.event.data as Item).n}`
  const logged = new Map(changes.map((c, index) => [key(c), index]))
  const everything = [...acked, ...events]
  const unlogged = everything.filter(a => !logged.has(`${a.id} ${a.n}`))
  t.same(unlogged, [], `every acknowledged change and custom event is in the log (${acked.length} writes, ${events.length} events)`)
  const logPositions = acked.map(a => logged.get(`${a.id} ${a.n}`) ?? -1)
  t.ok(logPositions.every((p, i) => i === 0 || p > logPositions[i - 1]), 'in the order they were acknowledged')
  t.ok(changes.every(c => c.event.type === 'create' || c.event.type === 'event'), 'each write is logged as a create, each send as an event')
  t.ok(events.length > 5, `custom events were sent (${events.length})`)
})
