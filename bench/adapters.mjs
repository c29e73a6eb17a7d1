// Rough write and read figures per adapter, without sockets: set ops/s (one writer, and 16 at once) and the
// time to getGroup a group of 10 000 items. Writes bench/ADAPTERS.md. Run: npm run build && node bench/adapters.mjs
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { cpus, tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const BENCH = path.dirname(fileURLToPath(import.meta.url))
const { createKvAdapter, createRedisAdapter } = await import(path.join(BENCH, '..', 'dist', 'index.js'))
const ITEMS = 10_000
const DURATION_MS = 3000
const RUNS = 3
const value = (i) => ({ id: `i${i}`, title: 'x'.repeat(150), n: i })

async function freePort () {
  return await new Promise(resolve => {
    const server = createServer().listen(0, '127.0.0.1', () => { const { port } = server.address(); server.close(() => resolve(port)) })
  })
}

async function opsPerSecond (adapter, concurrency) {
  let done = 0
  const end = Date.now() + DURATION_MS
  const started = process.hrtime.bigint()
  await Promise.all(Array.from({ length: concurrency }, async (_, w) => {
    while (Date.now() < end) await adapter.set('bench', `w${w}`, `i${done++ % 100}`, value(done))
  }))
  return done / (Number(process.hrtime.bigint() - started) / 1e9)
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
const makers = {
  'memory (KvStore in_memory)': () => createKvAdapter({ store_method: 'in_memory' }),
  'SQLite (KvStore file_based)': () => createKvAdapter({ store_method: 'file_based', file_path: path.join(dir, `s${Math.random()}.db`) }),
  Redis: () => createRedisAdapter({ redis_url: `redis://127.0.0.1:${port}`, key_prefix: `b${Math.random()}:` })
}
const rows = []
try {
  for (const [name, make] of Object.entries(makers)) {
    const results = { one: [], many: [], group: [] }
    for (let r = 0; r < RUNS; r++) {
      const adapter = await make()
      await adapter.start?.()
      results.one.push(await opsPerSecond(adapter, 1))
      results.many.push(await opsPerSecond(adapter, 16))
      results.group.push(await getGroupMs(adapter))
      await adapter.close()
    }
    rows.push(`| ${name} | ${Math.round(median(results.one)).toLocaleString('en')} | ${Math.round(median(results.many)).toLocaleString('en')} | ${median(results.group).toFixed(1)} |`)
    console.log(rows.at(-1))
  }
} finally {
  redis.kill()
  rmSync(dir, { recursive: true, force: true })
}
writeFileSync(path.join(BENCH, 'ADAPTERS.md'), [
  '# Adapter figures',
  '',
  `Made by \`npm run build && node bench/adapters.mjs\` on ${new Date().toISOString().slice(0, 10)} (${cpus()[0].model}, ${cpus().length} cores, Node ${process.version}).`,
  `Straight against each adapter, no sockets, no subscribers; ~170-byte values; median of ${RUNS} runs of ${DURATION_MS / 1000} s; redis-server on loopback;`,
  'SQLite with WAL and synchronous=FULL (every acknowledged write is on disk). getGroup: median of 5 reads of a 10 000-item group.',
  '',
  '| adapter | set ops/s, 1 writer | set ops/s, 16 writers | getGroup of 10 000 items (ms) |',
  '|---|---|---|---|',
  ...rows,
  ''
].join('\n'))
