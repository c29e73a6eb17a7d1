// What the change log costs a write (issue 9), per adapter, without sockets: acknowledged set/s (one writer, and
// 16 at once, each `await set()` on its own group, in-process promises against one adapter) with the change log as
// configured by default and switched off (`change_log: { max_changes: 0 }`, the smallest the option allows: no log),
// CPU per set, and the time to getGroup a group of 10 000 items. The 16-writer SQLite figure is its group commit.
//
//   npm run build && node bench/adapters.mjs [--runs N] [--seconds S] [--adapters memory,sqlite,redis] [--out FILE]
//
// This process (the adapter, SQLite's threads included) is pinned to CPU 0 and redis-server to CPU 1. Log on and off
// alternate within each run so both see the same machine. Writes --out (default bench/ADAPTERS.md), keeping the
// hand-written notes below its "## Notes" heading.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { procCpuMs } from './lib/common.mjs'
import { CLK_TCK, pinSelf, startRedis } from './lib/procs.mjs'

const BENCH = path.dirname(fileURLToPath(import.meta.url))
const { createKvAdapter, createRedisAdapter } = await import(path.join(BENCH, '..', 'dist', 'index.js'))
const ITEMS = 10_000
const WRITERS = 16
const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '2' },
    adapters: { type: 'string', default: 'memory,sqlite,redis' },
    out: { type: 'string', default: path.join(BENCH, 'ADAPTERS.md') }
  }
})
const DURATION_MS = Number(args.seconds) * 1000
const RUNS = Number(args.runs)
const LOG_OFF = { max_changes: 0 }
const value = (i) => ({ id: `i${i}`, title: 'x'.repeat(150), n: i })

const pinned = pinSelf(0)
const dir = mkdtempSync(path.join(tmpdir(), 'bench-adapters-'))
const redis = args.adapters.includes('redis') ? await startRedis({ cpu: 1 }) : null

/** CPU seconds used so far by this process (SQLite's threads included) and by redis-server. */
function cpuSeconds () {
  const own = process.cpuUsage()
  return (own.user + own.system) / 1e6 + (redis ? procCpuMs(redis.pid, CLK_TCK) / 1000 : 0)
}

/** Acknowledged set/s and CPU µs per set (this process and redis-server), `concurrency` writers on their own groups. */
async function measureSets (adapter, concurrency, durationMs = DURATION_MS) {
  let done = 0
  const end = Date.now() + durationMs
  const started = process.hrtime.bigint()
  const cpuBefore = cpuSeconds()
  await Promise.all(Array.from({ length: concurrency }, async (_, w) => {
    while (Date.now() < end) {
      const n = done++
      await adapter.set('bench', `w${w}`, `i${n % 100}`, value(n))
    }
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
// Each maker takes the `change_log` option (undefined: the adapter's default).
const makers = {
  memory: { label: 'memory (KvStore in_memory)', make: (changeLog) => createKvAdapter({ store_method: 'in_memory', ...changeLog && { change_log: changeLog } }) },
  sqlite: {
    label: 'SQLite (KvStore file_based)',
    make: (changeLog) => createKvAdapter({ store_method: 'file_based', file_path: path.join(dir, `s${Math.random()}.db`), ...changeLog && { change_log: changeLog } })
  },
  redis: {
    label: 'Redis',
    make: (changeLog) => createRedisAdapter({ redis_url: redis.url, key_prefix: `b${Math.random()}:`, ...changeLog && { change_log: changeLog } })
  }
}
const figure = (xs) => Math.round(median(xs)).toLocaleString('en-US')
const percent = (on, off) => `${on >= off ? '+' : ''}${Math.round((on / off - 1) * 100)} %`
const rows = []
const targets = []
try {
  for (const key of args.adapters.split(',')) {
    const { label, make } = makers[key]
    const results = { on: { one: [], many: [], cpu: [] }, off: { one: [], many: [], cpu: [] }, group: [] }
    for (let r = 0; r < RUNS; r++) {
      // Which goes first alternates from run to run, so neither always meets a colder machine.
      const order = [[undefined, results.on], [LOG_OFF, results.off]]
      for (const [changeLog, into] of r % 2 === 0 ? order : order.reverse()) {
        const adapter = await make(changeLog)
        await adapter.start?.()
        // Warm-up, not counted: connections, scripts, JIT.
        await measureSets(adapter, WRITERS, 300)
        into.one.push((await measureSets(adapter, 1)).rate)
        const many = await measureSets(adapter, WRITERS)
        into.many.push(many.rate)
        into.cpu.push(many.cpu)
        if (changeLog === undefined) results.group.push(await getGroupMs(adapter))
        await adapter.close()
      }
    }
    const { on, off } = results
    rows.push(`| ${label} | ${figure(on.one)} / ${figure(off.one)} (${percent(median(on.one), median(off.one))}) | ` +
      `${figure(on.many)} / ${figure(off.many)} (${percent(median(on.many), median(off.many))}) | ` +
      `${median(on.cpu).toFixed(1)} / ${median(off.cpu).toFixed(1)} (${percent(median(on.cpu), median(off.cpu))}) | ${median(results.group).toFixed(1)} |`)
    console.log(rows.at(-1))
    if (key === 'sqlite') {
      const rate = median(on.many)
      targets.push(`| SQLite group commit: ${WRITERS} writers, log on | ≥ 20 000 set/s | ${figure(on.many)} set/s | ${rate >= 20_000 ? 'met' : '**missed**'} |`)
    } else {
      for (const [writers, a, b] of [[1, on.one, off.one], [WRITERS, on.many, off.many]]) {
        const slower = 1 - median(a) / median(b)
        targets.push(`| ${label}, ${writers} writer${writers > 1 ? 's' : ''}: set/s with the log vs without | ≤ 15 % slower | ${slower >= 0 ? `${Math.round(slower * 100)} % slower` : `${Math.round(-slower * 100)} % faster (noise)`} | ${slower <= 0.15 ? 'met' : '**missed**'} |`)
      }
    }
  }
} finally {
  await redis?.stop()
  rmSync(dir, { recursive: true, force: true })
}
// Written notes below the table (from a "## Notes" heading on) are kept across runs.
const previous = existsSync(args.out) ? readFileSync(args.out, 'utf8') : ''
const notes = previous.includes('\n## Notes') ? previous.slice(previous.indexOf('\n## Notes')) : ''
writeFileSync(args.out, [
  '# Adapter figures',
  '',
  `Made by \`npm run build && node bench/adapters.mjs ${process.argv.slice(2).join(' ')}\` on ${new Date().toISOString().slice(0, 10)} (${cpus()[0].model}, ${cpus().length} cores, Node ${process.version}).`,
  `Straight against each adapter, no sockets, no subscribers; ~170-byte values; median of ${RUNS} runs of ${DURATION_MS / 1000} s; redis-server on loopback;`,
  `${pinned ? 'this process (SQLite\'s threads included) pinned to CPU 0, redis-server to CPU 1;' : 'not pinned (no taskset);'} SQLite with WAL and synchronous=FULL (every acknowledged write is on disk; concurrent writes share a commit).`,
  'Log on: the default change-log retention; log off: `change_log: { max_changes: 0 }` (the smallest the option allows: no log). The writers each write their own group.',
  `CPU per set: this process and redis-server, in the ${WRITERS}-writer run; it is what the log costs`,
  'on a shared machine, where wall-clock rates follow the neighbours. getGroup: median of 5 reads of a 10 000-item group.',
  '',
  `| adapter | set/s, 1 writer: log on / off | set/s, ${WRITERS} writers: log on / off | CPU µs per set: log on / off | getGroup of 10 000 items (ms) |`,
  '|---|---|---|---|---|',
  ...rows,
  '',
  'Targets of issue 9:',
  '',
  '| target | bar | measured | |',
  '|---|---|---|---|',
  ...targets,
  ''
].join('\n') + notes)
console.log(`wrote ${args.out}`)
