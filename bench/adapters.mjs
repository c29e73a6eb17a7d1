// Rough write and read figures per adapter, without sockets: set ops/s (one writer, and 16 at once, each on
// its own group) with the change log on (the default retention) and off (change_log.max_changes 0), and the
// time to getGroup a group of 10 000 items. Writes bench/ADAPTERS.md.
// Run: npm run build && node bench/adapters.mjs [--runs N] [--seconds S]
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { cpus, tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const BENCH = path.dirname(fileURLToPath(import.meta.url))
const { createKvAdapter, createRedisAdapter } = await import(path.join(BENCH, '..', 'dist', 'index.js'))
const ITEMS = 10_000
const flag = (name, fallback) => {
  const at = process.argv.indexOf(name)
  return at < 0 ? fallback : Number(process.argv[at + 1])
}
const DURATION_MS = flag('--seconds', 2) * 1000
const RUNS = flag('--runs', 3)
const LOG_OFF = { maxChanges: 0, maxAgeMs: 1000 }
const value = (i) => ({ id: `i${i}`, title: 'x'.repeat(150), n: i })

async function freePort () {
  return await new Promise(resolve => {
    const server = createServer().listen(0, '127.0.0.1', () => { const { port } = server.address(); server.close(() => resolve(port)) })
  })
}

/** CPU seconds used so far by this process (SQLite's threads included) and by redis-server. */
function cpuSeconds () {
  const own = process.cpuUsage()
  // utime and stime of redis-server, in clock ticks (100 per second on Linux).
  const fields = readFileSync(`/proc/${redis.pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return (own.user + own.system) / 1e6 + (Number(fields[11]) + Number(fields[12])) / 100
}

/** Acknowledged set/s and CPU µs per set (this process and redis-server), `concurrency` writers on their own groups. */
async function measureSets (adapter, concurrency) {
  let done = 0
  const end = Date.now() + DURATION_MS
  const started = process.hrtime.bigint()
  const cpuBefore = cpuSeconds()
  await Promise.all(Array.from({ length: concurrency }, async (_, w) => {
    while (Date.now() < end) await adapter.set('bench', `w${w}`, `i${done++ % 100}`, value(done))
  }))
  return { rate: done / (Number(process.hrtime.bigint() - started) / 1e9), cpu: (cpuSeconds() - cpuBefore) * 1e6 / done }
}

async function getGroupMs (adapter) {
  for (let i = 0; i < ITEMS; i += 500) await Promise.all(Array.from({ length: 500 }, (_, k) => adapter.set('bench', 'big', `i${i + k}`, value(i + k))))
  const times = []
  for (let r = 0; r < 5; r++) {
    const started = process.hrtime.bigint()
    const items = await adapter.getGroup('bench', 'big')
    times.push(Number(process.hrtime.bigint() - started) / 1e6)
    if (items.length !== ITEMS) throw new Error(`getGroup returned ${items.length} items`)
  }
  return times.sort((a, b) => a - b)[2]
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const dir = mkdtempSync(path.join(tmpdir(), 'bench-adapters-'))
const port = await freePort()
const redis = spawn('redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' })
await new Promise(resolve => setTimeout(resolve, 300))
// Each maker takes the change-log retention (undefined: the adapter's default).
const makers = {
  'memory (KvStore in_memory)': (changeLog) => createKvAdapter({ storeMethod: 'in_memory', changeLog }),
  'SQLite (KvStore file_based)': (changeLog) => createKvAdapter({ storeMethod: 'file_based', filePath: path.join(dir, `s${Math.random()}.db`), changeLog }),
  Redis: (changeLog) => createRedisAdapter({
    redis_url: `redis://127.0.0.1:${port}`,
    key_prefix: `b${Math.random()}:`,
    ...changeLog && { change_log: { max_changes: changeLog.maxChanges, max_age_ms: changeLog.maxAgeMs } }
  })
}
const figure = (xs) => Math.round(median(xs)).toLocaleString('en')
const rows = []
try {
  for (const [name, make] of Object.entries(makers)) {
    const results = { on: { one: [], many: [], cpu: [] }, off: { one: [], many: [], cpu: [] }, group: [] }
    for (let r = 0; r < RUNS; r++) {
      // Log on and off alternate within a run, so both see the same machine load.
      for (const [changeLog, into] of [[undefined, results.on], [LOG_OFF, results.off]]) {
        const adapter = make(changeLog)
        await adapter.start?.()
        into.one.push((await measureSets(adapter, 1)).rate)
        const many = await measureSets(adapter, 16)
        into.many.push(many.rate)
        into.cpu.push(many.cpu)
        if (changeLog === undefined) results.group.push(await getGroupMs(adapter))
        await adapter.close()
      }
    }
    const { on, off } = results
    const cpuCost = Math.round((median(on.cpu) / median(off.cpu) - 1) * 100)
    rows.push(`| ${name} | ${figure(on.one)} / ${figure(off.one)} | ${figure(on.many)} / ${figure(off.many)} | ${median(on.cpu).toFixed(1)} / ${median(off.cpu).toFixed(1)} (${cpuCost >= 0 ? '+' : ''}${cpuCost} %) | ${median(results.group).toFixed(1)} |`)
    console.log(rows.at(-1))
  }
} finally {
  redis.kill()
  rmSync(dir, { recursive: true, force: true })
}
// Written notes below the table (from a "## Notes" heading on) are kept across runs.
const output = path.join(BENCH, 'ADAPTERS.md')
const previous = existsSync(output) ? readFileSync(output, 'utf8') : ''
const notes = previous.includes('\n## Notes') ? previous.slice(previous.indexOf('\n## Notes')) : ''
writeFileSync(output, [
  '# Adapter figures',
  '',
  `Made by \`npm run build && node bench/adapters.mjs --runs ${RUNS} --seconds ${DURATION_MS / 1000}\` on ${new Date().toISOString().slice(0, 10)} (${cpus()[0].model}, ${cpus().length} cores, Node ${process.version}).`,
  `Straight against each adapter, no sockets, no subscribers; ~170-byte values; median of ${RUNS} runs of ${DURATION_MS / 1000} s; redis-server on loopback;`,
  'SQLite with WAL and synchronous=FULL (every acknowledged write is on disk; concurrent writes share a commit).',
  'Log on: the default change-log retention; log off: `change_log: { max_changes: 0 }`. The 16 writers each write their own group.',
  'CPU per set: this process (SQLite threads included) and redis-server, in the 16-writer run; it is what the log costs',
  'on a shared machine, where wall-clock rates follow the neighbours. getGroup: median of 5 reads of a 10 000-item group.',
  '',
  '| adapter | set/s, 1 writer: log on / off | set/s, 16 writers: log on / off | CPU µs per set: log on / off (cost) | getGroup of 10 000 items (ms) |',
  '|---|---|---|---|---|',
  ...rows,
  ''
].join('\n') + notes)
