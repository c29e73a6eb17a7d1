// Runs the whole benchmark and writes bench/RESULTS.md plus raw JSON under bench/results/.
//
//   node bench/run.mjs            full run (3 repetitions per scenario, ~20 minutes)
//   node bench/run.mjs --smoke    short run (1 repetition, fewer connections, ~2 minutes)
//   options: --runs=N  --only=fanout-a,burst,...  --systems=bare-ws,socketio,motia,ours  --out=PATH
//
// Servers are pinned to CPU 0 and the load generator to CPU 1 (taskset); systems are interleaved
// (A B C D A B C D ...); a run whose load generator is above 85 % of a core is discarded and repeated (at
// most twice) for the scenarios whose compared metric depends on it.

import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import net from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { createRequire } from 'node:module'
import { freePort } from './lib/procs.mjs'

const BENCH = path.dirname(fileURLToPath(import.meta.url))
const ROOT = path.dirname(BENCH)
const NODE_MODULES = path.join(BENCH, 'node_modules')

const args = process.argv.slice(2)
const opt = (name, def) => {
  const a = args.find((x) => x === `--${name}` || x.startsWith(`--${name}=`))
  if (!a) return def
  return a.includes('=') ? a.slice(a.indexOf('=') + 1) : true
}
const SMOKE = !!opt('smoke', false)
const RUNS = Number(opt('runs', SMOKE ? 1 : 3))
const ONLY = opt('only', null)?.split(',')
const SYSTEM_FILTER = opt('systems', null)?.split(',')
const GEN_LIMIT_PCT = 85
const MAX_RETRIES = 2

if (!fs.existsSync(path.join(NODE_MODULES, 'hdr-histogram-js'))) {
  console.log('bench/node_modules missing: running `npm install --prefix bench` ...')
  const r = spawnSync('npm', ['install', '--prefix', BENCH, '--no-audit', '--no-fund'], { stdio: 'inherit' })
  if (r.status !== 0) throw new Error('npm install --prefix bench failed')
}

// ---------------------------------------------------------------------------------------------------------
// process management: everything started here is tracked and killed on exit, also on failure

const children = new Set()
function track (child) {
  children.add(child)
  child.on('exit', () => children.delete(child))
  return child
}
function killAll () {
  for (const c of children) {
    try { c.stdin?.end() } catch {}
    try { process.kill(c.pid, 'SIGKILL') } catch {}
  }
  for (const pid of extraPids) {
    try { process.kill(pid, 'SIGKILL') } catch {}
  }
}
const extraPids = new Set()
process.on('exit', killAll)
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killAll()
    try {
      const f = save('interrupted')
      if (f) console.log(`interrupted: wrote ${f} with the runs finished so far`)
    } catch {}
    process.exit(130)
  })
}
process.on('uncaughtException', (err) => {
  console.error(err)
  killAll()
  process.exit(1)
})

const HAS_TASKSET = spawnSync('taskset', ['-c', '0', 'true']).status === 0
const pin = (cpu) => (HAS_TASKSET && cpu != null ? ['taskset', '-c', String(cpu)] : [])
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100

function spawnPinned (cpu, cmd, argv, opts = {}) {
  const full = [...pin(cpu), cmd, ...argv]
  return track(spawn(full[0], full.slice(1), { stdio: ['pipe', 'pipe', 'pipe'], ...opts }))
}

function tail (s, n = 2000) {
  return s.length > n ? s.slice(-n) : s
}

/** Starts a server under test; resolves with its READY info. */
function startServer (file, { cpu = 0, config = {} } = {}) {
  // BENCH_SERVER_NODE_ARGS adds node flags to every server under test, e.g. "--cpu-prof --cpu-prof-dir=bench/profiles".
  const extraArgs = (process.env.BENCH_SERVER_NODE_ARGS ?? '').split(' ').filter(Boolean)
  const child = spawnPinned(cpu, process.execPath, ['--expose-gc', ...extraArgs, path.join(BENCH, 'servers', file)], {
    cwd: BENCH,
    env: { ...process.env, NODE_PATH: NODE_MODULES, BENCH_CONFIG: JSON.stringify(config), MOTIA_ANALYTICS_DISABLED: 'true' }
  })
  let out = ''
  let err = ''
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stopProc(child)
      reject(new Error(`${file} did not start in 30 s: ${tail(err)}`))
    }, 30_000)
    child.stderr.on('data', (d) => { err = tail(err + d, 8000) })
    child.stdout.on('data', (d) => {
      out += d
      const m = /^READY (.*)$/m.exec(out)
      if (m) {
        clearTimeout(timer)
        const info = JSON.parse(m[1])
        resolve({ info, child, stderr: () => err })
      }
    })
    child.on('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`${file} exited (${code}) before READY: ${tail(err)}`))
    })
  })
}

function stopProc (child, graceMs = 3000) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    const t = setTimeout(() => {
      try { process.kill(child.pid, 'SIGKILL') } catch {}
    }, graceMs)
    child.on('exit', () => {
      clearTimeout(t)
      resolve()
    })
    try { child.stdin.end() } catch {}
    try { process.kill(child.pid, 'SIGTERM') } catch {}
  })
}

/** Runs the load generator on CPU 1; resolves with its RESULT object. */
function runLoadgen (cfg, timeoutMs = 300_000) {
  const child = spawnPinned(1, process.execPath, [path.join(BENCH, 'loadgen.mjs'), JSON.stringify({ ...cfg, clkTck: CLK_TCK })], {
    cwd: BENCH,
    env: { ...process.env, NODE_PATH: NODE_MODULES }
  })
  let out = ''
  let err = ''
  child.stdout.on('data', (d) => { out += d })
  child.stderr.on('data', (d) => { err = tail(err + d, 8000) })
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      try { process.kill(child.pid, 'SIGKILL') } catch {}
    }, timeoutMs)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      const m = /^RESULT (.*)$/m.exec(out)
      if (m) return resolve(JSON.parse(m[1]))
      resolve({ error: `load generator exited (${code ?? signal}) without a result${signal ? ' (timeout?)' : ''}: ${tail(err)}` })
    })
  })
}

/** Starts redis-server on a free loopback port (not 6379), no persistence; it dies with our stdin pipe. */
async function startRedis (cpu) {
  const port = await freePort()
  const pinCmd = pin(cpu).join(' ')
  const script = `${pinCmd} redis-server --port ${port} --bind 127.0.0.1 --save '' --appendonly no --protected-mode no --loglevel warning & ` +
    'echo "PID $!"; cat >/dev/null; kill $! 2>/dev/null'
  const child = track(spawn('sh', ['-c', script], { stdio: ['pipe', 'pipe', 'pipe'] }))
  let out = ''
  child.stdout.on('data', (d) => { out += d })
  const pid = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('redis-server did not start')), 10_000)
    const check = () => {
      const m = /PID (\d+)/.exec(out)
      if (m) {
        clearTimeout(t)
        resolve(Number(m[1]))
      } else setTimeout(check, 20)
    }
    check()
  })
  extraPids.add(pid)
  // wait (bounded) until it accepts connections
  for (let i = 0; ; i++) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true) })
      s.on('error', () => resolve(false))
    })
    if (ok) break
    if (i > 200) throw new Error('redis-server did not accept connections within 10 s')
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  const Redis = createRequire(path.join(BENCH, 'package.json'))('ioredis')
  const url = `redis://127.0.0.1:${port}`
  const client = new Redis(url, { maxRetriesPerRequest: 2, retryStrategy: (n) => (n > 20 ? null : 100) })
  client.on('error', () => {})
  await client.ping()
  return {
    url,
    pid,
    port,
    flush: () => client.flushall(),
    stop: async () => {
      client.disconnect()
      await stopProc(child)
      try { process.kill(pid, 'SIGKILL') } catch {}
      extraPids.delete(pid)
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// machine and versions

function pkgVersion (dir) {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version
  } catch {
    return null
  }
}

function machine () {
  const cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8')
  const model = /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? 'unknown'
  const redisV = spawnSync('redis-server', ['--version'], { encoding: 'utf8' }).stdout?.trim()
  return {
    cpuModel: model,
    cpus: os.cpus().length,
    memGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    ulimitN: spawnSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).stdout.trim(),
    taskset: HAS_TASKSET,
    clkTck: CLK_TCK,
    redis: redisV || 'not found',
    versions: {
      'fastify-streams': pkgVersion(ROOT),
      fastify: pkgVersion(path.join(ROOT, 'node_modules', 'fastify')),
      '@fastify/websocket': pkgVersion(path.join(ROOT, 'node_modules', '@fastify', 'websocket')),
      'ws (plugin)': pkgVersion(path.join(ROOT, 'node_modules', 'ws')),
      'ws (bench)': pkgVersion(path.join(NODE_MODULES, 'ws')),
      'socket.io': pkgVersion(path.join(NODE_MODULES, 'socket.io')),
      'engine.io': pkgVersion(path.join(NODE_MODULES, 'engine.io')),
      '@motiadev/core': pkgVersion(path.join(NODE_MODULES, '@motiadev', 'core')),
      bufferutil: pkgVersion(path.join(NODE_MODULES, 'bufferutil')),
      'utf-8-validate': pkgVersion(path.join(NODE_MODULES, 'utf-8-validate')),
      'hdr-histogram-js': pkgVersion(path.join(NODE_MODULES, 'hdr-histogram-js')),
      ioredis: pkgVersion(path.join(NODE_MODULES, 'ioredis')),
      'ioredis (plugin)': pkgVersion(path.join(ROOT, 'node_modules', 'ioredis'))
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// scenarios

const SYSTEMS = {
  'bare-ws': { file: 'bare-ws.mjs', label: 'bare ws' },
  socketio: { file: 'socketio.mjs', label: 'Socket.IO' },
  motia: { file: 'motia.mjs', label: 'Motia' },
  ours: { file: 'ours.mjs', label: 'fastify-streams' }
}

const P = SMOKE
  ? {
      fanoutA: { subs: 500, rate: 100, warmMs: 2000, measureMs: 2000 },
      fanoutB: { subs: 1000, rate: 20, warmMs: 2000, measureMs: 2000 },
      burst: { subs: 100, count: 2000 },
      idle: { steps: [1000, 2000], holdMs: 500 },
      sync: {
        groups: [
          { group: 's1k', count: 1000, single: 10, herd: 100, herdReps: 1 },
          { group: 's10k', count: 10000, single: 3, herd: 0 }
        ]
      },
      writes: { subs: 200, durationMs: 1500, concurrency: 16 },
      twonode: { subsPerNode: 100, rate: 50, warmMs: 1500, measureMs: 2000 }
    }
  : {
      fanoutA: { subs: 1000, rate: 100, warmMs: 3000, measureMs: 10000 },
      fanoutB: { subs: 5000, rate: 20, warmMs: 3000, measureMs: 10000 },
      burst: { subs: 100, count: 10000 },
      idle: { steps: [5000, 10000], holdMs: 2000 },
      sync: {
        groups: [
          { group: 's1k', count: 1000, single: 30, herd: 500, herdReps: 3 },
          { group: 's10k', count: 10000, single: 10, herd: 500, herdReps: 1 }
        ]
      },
      writes: { subs: 1000, durationMs: 5000, concurrency: 16 },
      twonode: { subsPerNode: 250, rate: 100, warmMs: 2000, measureMs: 8000 }
    }

const SCENARIOS = [
  {
    id: 'fanout-a',
    title: `Fan-out: 1 group, ${P.fanoutA.subs} subscribers, ${P.fanoutA.rate} updates/s`,
    kind: 'fanout',
    systems: ['bare-ws', 'socketio', 'motia', 'ours'],
    params: P.fanoutA,
    genSensitive: true
  },
  {
    id: 'fanout-b',
    title: `Fan-out: 1 group, ${P.fanoutB.subs} subscribers, ${P.fanoutB.rate} updates/s`,
    kind: 'fanout',
    systems: ['bare-ws', 'socketio', 'motia', 'ours'],
    params: P.fanoutB,
    genSensitive: true
  },
  {
    id: 'burst',
    title: `Burst: 1 group, ${P.burst.subs} subscribers, ${P.burst.count} updates as fast as the server publishes`,
    kind: 'burst',
    systems: ['bare-ws', 'socketio', 'motia', 'ours'],
    params: P.burst,
    // the compared metric is server CPU per delivery; the generator is expected to be busy here
    genSensitive: false
  },
  {
    id: 'idle',
    title: `Idle capacity: RSS per subscribed connection at ${P.idle.steps.join(' and ')} connections`,
    kind: 'idle',
    systems: ['bare-ws', 'socketio', 'motia', 'ours'],
    params: P.idle,
    genSensitive: false
  },
  {
    id: 'sync',
    title: 'Initial sync: time to `sync` a group (items of ~200 B), alone and with a herd of joins at once',
    kind: 'sync',
    systems: ['socketio', 'motia', 'ours'],
    params: P.sync,
    genSensitive: false
  },
  {
    id: 'writes',
    title: `Writes: set ops/s (${P.writes.concurrency} concurrent writers, ${P.writes.durationMs} ms)`,
    kind: 'writes',
    variants: [
      { id: 'memory-0', system: 'ours', adapter: 'memory', subs: 0, label: 'memory, no subscribers' },
      { id: 'memory-subs', system: 'ours', adapter: 'memory', subs: P.writes.subs, label: `memory, ${P.writes.subs} subscribers` },
      { id: 'sqlite-subs', system: 'ours', adapter: 'sqlite', subs: P.writes.subs, label: `SQLite, ${P.writes.subs} subscribers` },
      { id: 'redis-0', system: 'ours', adapter: 'redis', subs: 0, label: 'Redis, no subscribers' },
      { id: 'redis-subs', system: 'ours', adapter: 'redis', subs: P.writes.subs, label: `Redis, ${P.writes.subs} subscribers` },
      { id: 'redis-raw', system: 'redis-raw', adapter: 'redis', subs: 0, label: 'raw ioredis HSET+PUBLISH (reference)' }
    ],
    params: P.writes,
    genSensitive: false
  },
  {
    id: 'twonode',
    title: `Two nodes of fastify-streams on one Redis: ${P.twonode.subsPerNode} subscribers per node, ${P.twonode.rate} updates/s published on node A`,
    kind: 'twonode',
    systems: ['ours'],
    params: P.twonode,
    genSensitive: true
  }
]

// ---------------------------------------------------------------------------------------------------------

const oursDist = path.join(ROOT, 'dist', 'index.js')
const available = { 'bare-ws': true, socketio: true, motia: true, ours: fs.existsSync(oursDist), 'redis-raw': true }
const notes = []
if (!available.ours) notes.push('fastify-streams was not run: `dist/index.js` does not exist (run `npm run build` in the repo root first).')

async function preflightOurs () {
  if (!available.ours) return
  try {
    const s = await startServer('ours.mjs', { config: { adapter: 'memory' } })
    await stopProc(s.child)
  } catch (err) {
    available.ours = false
    notes.push('fastify-streams was not run: its server failed to start: ' + String(err.message).slice(0, 1500))
  }
}

function wanted (sys) {
  return available[sys] && (!SYSTEM_FILTER || SYSTEM_FILTER.includes(sys) || sys === 'redis-raw')
}

/** One run of one system in one scenario (servers started and stopped around it). */
async function runOnce (sc, sys, variant, ctx) {
  const servers = []
  let sqliteDir = null
  try {
    if (sc.kind === 'twonode') {
      await ctx.redis.flush()
      for (let i = 0; i < 2; i++) servers.push(await startServer('ours.mjs', { cpu: 0, config: { adapter: 'redis', redisUrl: ctx.redis.url } }))
    } else if (sc.kind === 'writes') {
      const config = { adapter: variant.adapter }
      if (variant.adapter === 'redis') {
        await ctx.redis.flush()
        config.redisUrl = ctx.redis.url
      }
      if (variant.adapter === 'sqlite') {
        sqliteDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fs-bench-sqlite-'))
        config.sqlitePath = path.join(sqliteDir, 'streams.db')
      }
      servers.push(await startServer(variant.system === 'redis-raw' ? 'redis-raw.mjs' : 'ours.mjs', { cpu: 0, config }))
    } else {
      servers.push(await startServer(SYSTEMS[sys].file, { cpu: 0, config: { adapter: 'memory' } }))
    }
    const params = sc.kind === 'writes' ? { ...sc.params, subs: variant.subs, groups: Math.max(1, variant.subs || sc.params.subs) } : sc.params
    const result = await runLoadgen({ scenario: sc.kind, servers: servers.map((s) => s.info), params, knownPids: ctx.redis ? [ctx.redis.pid] : [] })
    result.serverInfo = servers.map((s) => s.info)
    if (result.error) {
      const errs = servers.map((s) => s.stderr()).filter(Boolean).join('\n')
      if (errs) result.serverStderr = tail(errs, 3000)
    }
    if (sqliteDir) {
      try {
        result.sqliteBytes = fs.readdirSync(sqliteDir).reduce((a, f) => a + fs.statSync(path.join(sqliteDir, f)).size, 0)
      } catch {}
    }
    return result
  } catch (err) {
    return { error: String(err && err.message ? err.message : err) }
  } finally {
    for (const s of servers) await stopProc(s.child)
    if (sqliteDir) fs.rmSync(sqliteDir, { recursive: true, force: true })
  }
}

function genPct (r) {
  if (r.genCpuPct != null) return r.genCpuPct
  return null
}

function machineBusyMs () {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0].trim().split(/\s+/).slice(1).map(Number)
  return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) * 1000 / CLK_TCK
}

/**
 * This box may be shared (other sessions' builds and browsers). Before each run, wait (bounded) until the
 * machine is quiet: less than FOREIGN_LIMIT_PCT of a core busy over 500 ms (nothing of ours runs then).
 */
const FOREIGN_LIMIT_PCT = 15
let quietWaitMs = 0
const QUIET_BUDGET_MS = SMOKE ? 20_000 : 240_000 // in all: past it, runs go ahead (and are flagged if noisy)
const quietBudgetLeft = () => QUIET_BUDGET_MS - quietWaitMs
async function waitQuiet (maxMs = SMOKE ? 5000 : 30000) {
  maxMs = Math.max(500, Math.min(maxMs, quietBudgetLeft()))
  const t0 = Date.now()
  let pct = 0
  while (Date.now() - t0 < maxMs) {
    const b0 = machineBusyMs()
    const w0 = Date.now()
    await new Promise((resolve) => setTimeout(resolve, 500))
    pct = 100 * (machineBusyMs() - b0) / (Date.now() - w0)
    if (pct < FOREIGN_LIMIT_PCT) break
  }
  quietWaitMs += Date.now() - t0
  return Math.round(pct)
}

// past this point of the run no run is repeated any more (kept and flagged instead), so that a busy machine
// cannot stretch the whole run much beyond its planned length
const RUN_STARTED = Date.now()
const RETRY_DEADLINE = RUN_STARTED + (SMOKE ? 3 : 20) * 60_000

async function runWithRetries (sc, sys, variant, ctx) {
  const discarded = []
  for (let attempt = 0; attempt <= MAX_RETRIES; attempt++) {
    const busyBefore = await waitQuiet()
    const r = await runOnce(sc, sys, variant, ctx)
    r.machineBusyBeforePct = busyBefore
    const g = genPct(r)
    const last = attempt === MAX_RETRIES || Date.now() > RETRY_DEADLINE
    // A generator saturated on a quiet machine is intrinsic to the load (one core decoding it), and a repeat
    // cannot help: only repeat when other processes may have slowed it down.
    if (sc.genSensitive && !r.error && g != null && g > GEN_LIMIT_PCT && !last && (r.foreignCpuPct ?? 0) > FOREIGN_LIMIT_PCT) {
      discarded.push({ reason: `generator at ${g} % of a core (> ${GEN_LIMIT_PCT} %)`, result: r })
      continue
    }
    if (r.error && /before READY/.test(r.error) && !last) {
      // e.g. the repo's node_modules or dist/ being rebuilt at that moment
      discarded.push({ reason: 'server failed to start: ' + r.error.split('\n')[0].slice(0, 200), result: r })
      await new Promise((resolve) => setTimeout(resolve, 5000))
      continue
    }
    if (!r.error && r.foreignCpuPct != null && r.foreignCpuPct > 2 * FOREIGN_LIMIT_PCT && !last && quietBudgetLeft() > 0) {
      discarded.push({ reason: `other processes used ${r.foreignCpuPct} % of a core during the run`, result: r })
      continue
    }
    if (sc.genSensitive && g != null && g > GEN_LIMIT_PCT) r.generatorLimited = true
    if (r.foreignCpuPct != null && r.foreignCpuPct > 2 * FOREIGN_LIMIT_PCT) r.noisy = true
    r.discarded = discarded
    return r
  }
}

function summaryLine (sc, sys, r) {
  if (r.error) return `error: ${r.error.split('\n')[0].slice(0, 200)}`
  switch (sc.kind) {
    case 'fanout':
      return `${r.deliveriesPerSec}/s ${r.deliveryPct}% p50 ${r.latency.p50} p99 ${r.latency.p99} ms, server ${r.serverCpuPct}% ${r.cpuUsPerDelivery} µs/del, gen ${r.genCpuPct}%`
    case 'burst':
      return `${r.completionMs} ms ${r.deliveriesPerSec}/s ${r.deliveryPct}%, ${r.cpuUsPerDelivery} µs/del, gen ${r.genCpuPct}%`
    case 'idle':
      return r.steps.map((s) => `${s.conns}: ${s.rssPerConnKb} KB/conn`).join(', ')
    case 'sync':
      return r.groups.map((g) => `${g.items}: p50 ${g.single.p50} p99 ${g.single.p99} ms${g.herd ? ` herd p99 ${g.herd.p99} ms` : ''}`).join('; ')
    case 'writes':
      return `${r.opsPerSec} ops/s, ${r.serverCpuUsPerOp} µs/op${r.deliveryPct != null ? `, ${r.deliveryPct}% delivered, p99 ${r.latency.p99} ms` : ''}${r.errors ? `, ${r.errors} errors (${r.firstError})` : ''}`
    case 'twonode':
      return `local p50 ${r.latencyLocal.p50} p99 ${r.latencyLocal.p99}, remote p50 ${r.latencyRemote.p50} p99 ${r.latencyRemote.p99} ms, ${r.deliveryPct}%`
  }
  return ''
}

// ---------------------------------------------------------------------------------------------------------
// statistics and report

function median (xs) {
  const v = xs.filter((x) => x != null && Number.isFinite(x)).sort((a, b) => a - b)
  if (!v.length) return null
  const m = v.length >> 1
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2
}
function minmax (xs) {
  const v = xs.filter((x) => x != null && Number.isFinite(x))
  if (!v.length) return null
  return [Math.min(...v), Math.max(...v)]
}
function fmtNum (x) {
  if (x == null || !Number.isFinite(x)) return '–'
  const a = Math.abs(x)
  if (a >= 100000) return Math.round(x).toLocaleString('en-US')
  if (a >= 1000) return Math.round(x).toLocaleString('en-US')
  if (a >= 100) return x.toFixed(0)
  if (a >= 10) return x.toFixed(1)
  if (a >= 1) return x.toFixed(2)
  return x.toFixed(3)
}
function cell (xs) {
  const m = median(xs)
  if (m == null) return '–'
  const mm = minmax(xs)
  if (xs.filter((x) => x != null).length < 2 || mm[0] === mm[1]) return fmtNum(m)
  return `${fmtNum(m)} (${fmtNum(mm[0])}–${fmtNum(mm[1])})`
}
function ratioCell (a, b) {
  // pair by pair: same repetition index
  const rs = []
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    if (a[i] != null && b[i] != null && b[i] !== 0 && Number.isFinite(a[i]) && Number.isFinite(b[i])) rs.push(a[i] / b[i])
  }
  if (!rs.length) return '–'
  const m = median(rs)
  const mm = minmax(rs)
  const f = (x) => x.toFixed(2) + '×'
  return rs.length < 2 || mm[0] === mm[1] ? f(m) : `${f(m)} (${f(mm[0])}–${f(mm[1])})`
}

const get = (obj, p) => p.split('.').reduce((o, k) => (o == null ? undefined : o[k]), obj)

function metricTable (systems, runsBySys, metrics, ratios = []) {
  const head = ['Metric', ...systems.map((s) => SYSTEMS[s]?.label ?? s)]
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`]
  const values = (sys, m) => (runsBySys[sys] || []).map((r) => (r && !r.error ? (typeof m.get === 'function' ? m.get(r) : get(r, m.get)) : null))
  for (const m of metrics) {
    lines.push(`| ${m.name} | ${systems.map((s) => cell(values(s, m))).join(' | ')} |`)
  }
  for (const r of ratios) {
    if (!systems.includes(r.ref) || !runsBySys[r.ref]) continue
    const m = metrics.find((x) => x.name === r.metric)
    const refVals = values(r.ref, m)
    lines.push(`| ${r.name} | ${systems.map((s) => (s === r.ref ? '1.00×' : ratioCell(r.invert ? refVals : values(s, m), r.invert ? values(s, m) : refVals))).join(' | ')} |`)
  }
  return lines.join('\n')
}

function errorsOf (runsBySys) {
  const out = []
  for (const [sys, runs] of Object.entries(runsBySys)) {
    runs.forEach((r, i) => {
      if (r && r.error) out.push(`- ${SYSTEMS[sys]?.label ?? sys}, run ${i + 1}: \`${r.error.split('\n')[0].slice(0, 300)}\``)
      if (r && r.noisy) out.push(`- ${SYSTEMS[sys]?.label ?? sys}, run ${i + 1}: other processes used ${r.foreignCpuPct} % of a core during the run after ${MAX_RETRIES} retries (kept, flagged)`)
      if (r && r.generatorLimited) out.push(`- ${SYSTEMS[sys]?.label ?? sys}, run ${i + 1}: generator at ${r.genCpuPct} % of a core (> ${GEN_LIMIT_PCT} %; kept and flagged: latency is an upper bound, CPU per delivery stands)`)
      if (r && r.discarded && r.discarded.length) out.push(`- ${SYSTEMS[sys]?.label ?? sys}, run ${i + 1}: ${r.discarded.length} attempt(s) discarded (${r.discarded.map((d) => d.reason).join('; ')})`)
      if (r && r.clientErrors) out.push(`- ${SYSTEMS[sys]?.label ?? sys}, run ${i + 1}: ${r.clientErrors} client errors (${r.firstClientError})`)
    })
  }
  return out.length ? '\n\nNotes on runs:\n' + out.join('\n') : ''
}

function fanoutSection (sc, runsBySys, systems) {
  const metrics = [
    { name: 'deliveries/s', get: 'deliveriesPerSec' },
    { name: 'delivered %', get: 'deliveryPct' },
    { name: 'latency p50 (ms)', get: 'latency.p50' },
    { name: 'latency p95 (ms)', get: 'latency.p95' },
    { name: 'latency p99 (ms)', get: 'latency.p99' },
    { name: 'latency p99.9 (ms)', get: 'latency.p999' },
    { name: 'latency max (ms)', get: 'latency.max' },
    { name: 'server CPU (% of a core)', get: 'serverCpuPct' },
    { name: 'server CPU µs per delivery', get: 'cpuUsPerDelivery' },
    { name: 'deliveries per server CPU-second', get: 'deliveriesPerCpuSec' },
    { name: 'bytes per delivery (frame payload)', get: 'bytesPerDelivery' },
    { name: 'server RSS at end (MB)', get: (r) => r.serverRssKb / 1024 },
    { name: 'generator CPU (% of a core)', get: 'genCpuPct' },
    { name: 'other processes\' CPU (% of a core)', get: 'foreignCpuPct' }
  ]
  const ratios = [
    { name: 'CPU per delivery ÷ bare ws', metric: 'server CPU µs per delivery', ref: 'bare-ws' },
    { name: 'efficiency × Socket.IO (deliveries/CPU-s)', metric: 'deliveries per server CPU-second', ref: 'socketio' },
    { name: 'p99 ÷ Socket.IO', metric: 'latency p99 (ms)', ref: 'socketio' }
  ]
  return metricTable(systems, runsBySys, metrics, ratios)
}

function burstSection (sc, runsBySys, systems) {
  const metrics = [
    { name: 'completion (ms)', get: 'completionMs' },
    { name: 'server publish loop (ms)', get: 'publishLoopMs' },
    { name: 'deliveries/s', get: 'deliveriesPerSec' },
    { name: 'delivered %', get: 'deliveryPct' },
    { name: 'latency p50 (ms)', get: 'latency.p50' },
    { name: 'latency p99 (ms)', get: 'latency.p99' },
    { name: 'latency max (ms)', get: 'latency.max' },
    { name: 'server CPU (ms)', get: 'serverCpuMs' },
    { name: 'server CPU µs per delivery', get: 'cpuUsPerDelivery' },
    { name: 'deliveries per server CPU-second', get: 'deliveriesPerCpuSec' },
    { name: 'server RSS at end (MB)', get: (r) => r.serverRssKb / 1024 },
    { name: 'generator CPU (% of a core)', get: 'genCpuPct' },
    { name: 'other processes\' CPU (% of a core)', get: 'foreignCpuPct' }
  ]
  const ratios = [
    { name: 'CPU per delivery ÷ bare ws', metric: 'server CPU µs per delivery', ref: 'bare-ws' },
    { name: 'efficiency × Socket.IO (deliveries/CPU-s)', metric: 'deliveries per server CPU-second', ref: 'socketio' }
  ]
  return metricTable(systems, runsBySys, metrics, ratios)
}

function idleSection (sc, runsBySys, systems) {
  const metrics = []
  const ratios = []
  for (const [i, n] of sc.params.steps.entries()) {
    metrics.push({ name: `RSS per connection at ${n} (KB)`, get: (r) => r.steps?.[i]?.rssPerConnKb })
    metrics.push({ name: `JS heap per connection at ${n} (KB)`, get: (r) => r.steps?.[i]?.heapPerConnKb })
    metrics.push({ name: `connect+subscribe rate to ${n} (conn/s)`, get: (r) => r.steps?.[i]?.connectSubscribePerSec })
    metrics.push({ name: `idle server CPU at ${n} (%)`, get: (r) => r.steps?.[i]?.idleCpuPct })
    ratios.push({ name: `RSS/conn at ${n} ÷ bare ws`, metric: `RSS per connection at ${n} (KB)`, ref: 'bare-ws' })
    ratios.push({ name: `RSS/conn at ${n} ÷ Socket.IO`, metric: `RSS per connection at ${n} (KB)`, ref: 'socketio' })
  }
  metrics.push({ name: 'baseline RSS before connecting (MB)', get: (r) => r.baseRssKb / 1024 })
  return metricTable(systems, runsBySys, metrics, ratios)
}

function syncSection (sc, runsBySys, systems) {
  const metrics = []
  const ratios = []
  for (const [i, g] of sc.params.groups.entries()) {
    const n = g.count
    metrics.push({ name: `${n} items, alone: p50 (ms)`, get: (r) => r.groups?.[i]?.single.p50 })
    metrics.push({ name: `${n} items, alone: p99 (ms)`, get: (r) => r.groups?.[i]?.single.p99 })
    metrics.push({ name: `${n} items, alone: max (ms)`, get: (r) => r.groups?.[i]?.single.max })
    metrics.push({ name: `${n} items, alone: server CPU per sync (ms)`, get: (r) => r.groups?.[i]?.single.serverCpuMsPerSync })
    metrics.push({ name: `${n} items: sync frame (KB)`, get: (r) => r.groups?.[i]?.single.bytes / 1024 })
    ratios.push({ name: `${n} items alone, p99 ÷ Socket.IO`, metric: `${n} items, alone: p99 (ms)`, ref: 'socketio' })
    if (g.herd) {
      metrics.push({ name: `${n} items, ${g.herd} joins at once: p50 (ms)`, get: (r) => r.groups?.[i]?.herd?.p50 })
      metrics.push({ name: `${n} items, ${g.herd} joins at once: p99 (ms)`, get: (r) => r.groups?.[i]?.herd?.p99 })
      metrics.push({ name: `${n} items, ${g.herd} joins at once: all synced (ms)`, get: (r) => median(r.groups?.[i]?.herd?.totalMs ?? []) })
      metrics.push({ name: `${n} items, herd: server event-loop p99 (ms)`, get: (r) => r.groups?.[i]?.herd?.serverEventLoopP99Ms })
      metrics.push({ name: `${n} items, herd: generator CPU (%)`, get: (r) => r.groups?.[i]?.herd?.genCpuPct })
      ratios.push({ name: `${n} items herd, p99 ÷ Socket.IO`, metric: `${n} items, ${g.herd} joins at once: p99 (ms)`, ref: 'socketio' })
    }
  }
  return metricTable(systems, runsBySys, metrics, ratios)
}

function writesSection (sc, runsByVariant) {
  const head = '| Variant | set ops/s | server CPU µs per op | Redis CPU µs per op | delivered % | publish→delivery p50 (ms) | p99 (ms) | ops/s ÷ raw ioredis |'
  const lines = [head, '|---|---|---|---|---|---|---|---|']
  const raw = runsByVariant['redis-raw'] || []
  for (const v of sc.variants) {
    const runs = runsByVariant[v.id]
    if (!runs) continue
    const val = (f) => runs.map((r) => (r && !r.error ? f(r) : null))
    const ops = val((r) => r.opsPerSec)
    const rawOps = raw.map((r) => (r && !r.error ? r.opsPerSec : null))
    const redisUs = v.adapter === 'redis' ? cell(val((r) => (r.knownCpuMs != null && r.ops ? 1000 * r.knownCpuMs / r.ops : null))) : '–'
    lines.push(`| ${v.label} | ${cell(ops)} | ${cell(val((r) => r.serverCpuUsPerOp))} | ${redisUs} | ${cell(val((r) => r.deliveryPct))} | ${cell(val((r) => r.latency?.p50))} | ${cell(val((r) => r.latency?.p99))} | ${v.adapter === 'redis' && v.id !== 'redis-raw' ? ratioCell(ops, rawOps) : '–'} |`)
  }
  return lines.join('\n')
}

function twonodeSection (sc, runsBySys) {
  const metrics = [
    { name: 'node A (publisher) subscribers: p50 (ms)', get: 'latencyLocal.p50' },
    { name: 'node A subscribers: p99 (ms)', get: 'latencyLocal.p99' },
    { name: 'node B (other node) subscribers: p50 (ms)', get: 'latencyRemote.p50' },
    { name: 'node B subscribers: p99 (ms)', get: 'latencyRemote.p99' },
    { name: 'node B subscribers: max (ms)', get: 'latencyRemote.max' },
    { name: 'cross-node extra p50 (ms)', get: 'extraP50Ms' },
    { name: 'cross-node extra p99 (ms)', get: 'extraP99Ms' },
    { name: 'delivered %, node A', get: 'deliveryPctLocal' },
    { name: 'delivered %, node B', get: 'deliveryPctRemote' },
    { name: 'both nodes: server CPU µs per delivery', get: 'cpuUsPerDelivery' },
    { name: 'generator CPU (%)', get: 'genCpuPct' }
  ]
  return metricTable(['ours'], runsBySys, metrics)
}

function targetsSection (all, meta) {
  const lines = []
  const runsOf = (id) => all.find((s) => s.id === id)?.runs || {}
  const ours = (id) => runsOf(id).ours
  if (!ours('fanout-a')) return '\nfastify-streams was not part of this run, so the targets of issue #5 are not evaluated here.\n'
  const ratioMed = (id, metric, ref, invert = false) => {
    const a = (runsOf(id).ours || []).map((r) => (r && !r.error ? get(r, metric) : null))
    const b = (runsOf(id)[ref] || []).map((r) => (r && !r.error ? get(r, metric) : null))
    const rs = []
    for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] != null && b[i]) rs.push(invert ? b[i] / a[i] : a[i] / b[i])
    return median(rs)
  }
  const row = (name, target, value, ok) => lines.push(`| ${name} | ${target} | ${value == null ? '–' : value} | ${value == null ? '–' : ok ? 'met' : '**missed**'} |`)
  lines.push('| Target | Bar | Measured (median) | |', '|---|---|---|---|')
  let v = ratioMed('fanout-a', 'cpuUsPerDelivery', 'bare-ws')
  row('CPU per delivery vs bare ws, fan-out A', '≤ 1.0×', v && v.toFixed(2) + '×', v <= 1.0)
  v = ratioMed('burst', 'cpuUsPerDelivery', 'bare-ws')
  row('CPU per delivery vs bare ws, burst', '≤ 0.8×', v && v.toFixed(2) + '×', v <= 0.8)
  for (const id of ['fanout-a', 'fanout-b', 'burst']) {
    v = ratioMed(id, 'deliveriesPerCpuSec', 'socketio')
    row(`efficiency vs Socket.IO, ${id}`, '≥ 1.5×', v && v.toFixed(2) + '×', v >= 1.5)
  }
  v = median((runsOf('idle').ours || []).map((r) => r?.steps?.[0]?.rssPerConnKb))
  row(`RSS per idle subscribed connection at ${meta.params.idle.steps[0]}`, '≤ 8 KB', v && v.toFixed(2) + ' KB', v <= 8)
  v = median((runsOf('sync').ours || []).map((r) => r?.groups?.[0]?.single?.p99))
  row('sync of 1 000 items, p99', '< 50 ms', v && v + ' ms', v < 50)
  v = median((runsOf('sync').ours || []).map((r) => r?.groups?.[1]?.single?.p99))
  row('sync of 10 000 items, p99', '< 250 ms', v && v + ' ms', v < 250)
  const w = runsOf('writes')
  v = median((w['memory-0'] || []).map((r) => r?.opsPerSec))
  row('memory set, no subscribers', '≥ 100 000 ops/s', v && Math.round(v).toLocaleString('en-US') + ' ops/s', v >= 100000)
  const redis0 = (w['redis-0'] || []).map((r) => r?.opsPerSec)
  const raw = (w['redis-raw'] || []).map((r) => r?.opsPerSec)
  const rr = []
  for (let i = 0; i < Math.min(redis0.length, raw.length); i++) if (redis0[i] && raw[i]) rr.push(redis0[i] / raw[i])
  v = median(rr)
  row('Redis set vs raw ioredis HSET+PUBLISH (no subscribers)', '≥ 0.7×', v && v.toFixed(2) + '×', v >= 0.7)
  return '\n' + lines.join('\n') + '\n'
}

function report (meta, all, startedAt, endedAt, notes) {
  const m = meta.machine
  const P = meta.params
  const SMOKE = meta.smoke
  const RUNS = meta.runs
  const q = meta.quiet || {}
  const out = []
  out.push('# fastify-streams benchmark results', '')
  out.push(`Generated by \`${meta.command}\` on ${new Date(endedAt).toISOString()} (${Math.round((endedAt - startedAt) / 1000)} s).` +
    (SMOKE ? ' **Smoke run**: one repetition and reduced sizes; use the full run for numbers to quote.' : ''), '')
  out.push('## Machine and versions', '')
  out.push(`- CPU: ${m.cpuModel}, ${m.cpus} cores, ${m.memGiB} GiB RAM; kernel ${m.kernel}`)
  out.push(`- Node ${m.node}; \`ulimit -n\` ${m.ulimitN}; CLK_TCK ${m.clkTck}; taskset: ${m.taskset ? 'yes (server CPU 0, generator CPU 1)' : 'not available: runs are not pinned'}`)
  out.push(`- ${m.redis}`)
  out.push(`- Packages: ${Object.entries(m.versions).map(([k, v]) => `${k} ${v ?? 'n/a'}`).join(', ')}`)
  out.push(`- Native ws addons loaded by each server (fairness check): ${meta.addons}`)
  out.push('')
  out.push('## Method', '')
  out.push('- Each system runs in its own process pinned to CPU 0 (`taskset -c 0 node --expose-gc bench/servers/<system>.mjs`); the load generator (`bench/loadgen.mjs`, raw `ws` clients) runs pinned to CPU 1. Redis (writes) shares CPU 0 with the server; in the two-node case both nodes take CPU 0 and Redis takes CPU 1 with the generator (a known distortion).')
  out.push(`- Systems are interleaved (A B C D, A B C D, …), ${RUNS} repetition(s) per scenario, each run with a fresh server process. Cells are **median (min–max)** over runs; ratios are computed pair by pair (same repetition index), then the median (min–max) of the ratios is shown.`)
  out.push('- Every server publishes from an in-process timer the same ~100-byte JSON payload `{"id","seq","ts","pad"}` where `ts` is the **scheduled** publish time from `process.hrtime.bigint()` (CLOCK_MONOTONIC, shared across processes); latency = receive time − ts, recorded for every delivery in an HDR histogram (µs). Fan-out publishes are: fastify-streams `app.streams.set()` of one item (subscribers get `update`), Motia `stream.set()` likewise, Socket.IO `io.to(room).emit(\'update\', payload)`, bare ws one pre-serialised frame (the same envelope as fastify-streams, `rev` included, so the same size) sent to every client.')
  out.push(`- Server CPU = utime+stime of all its threads from \`/proc/<pid>/stat\` over the measured window (including the drain); RSS from \`/proc/<pid>/status\` (idle: after \`global.gc()\`). Efficiency = deliveries per server CPU-second and server CPU µs per delivery. Generator CPU from \`process.cpuUsage()\`; a run where it exceeds ${GEN_LIMIT_PCT} % of a core while other processes also used the machine is discarded and repeated (max ${MAX_RETRIES} retries) for fan-out and two-node (the latency metrics depend on it); when the machine was otherwise quiet the saturation is intrinsic to the load (one core decoding ~100 000 frames/s from 1 000+ sockets), a repeat cannot help, and the run is kept and flagged: read its latency as an upper bound and compare CPU per delivery. In the burst the generator is expected to be the bottleneck: compare CPU per delivery there, not completion time.`)
  out.push(`- The machine may be shared: before each run the runner waits (bounded) until the rest of the machine uses < ${FOREIGN_LIMIT_PCT} % of a core, and a run during which other processes used > ${2 * FOREIGN_LIMIT_PCT} % of a core is discarded and repeated (max ${MAX_RETRIES} retries; kept and flagged after that). Time spent waiting for quiet: ${Math.round((q.waitedMs ?? 0) / 1000)} s (budget ${(q.budgetMs ?? 0) / 1000} s; past it, noisy runs are kept and flagged).`)
  out.push(`- Fan-out: warm-up ${P.fanoutA.warmMs} ms, then ${P.fanoutA.measureMs} ms measured (deliveries counted by scheduled time inside the window, up to 3 s drain).`)
  out.push('- Sync: Socket.IO baseline is `socket.emit(\'sync\', items)` of the same array on join; bare ws is not part of it. Writes: closed loop of concurrent `app.streams.set()` (one item per group, round-robin over as many groups as subscribers, one subscriber per group); the raw reference is ioredis `HSET` + `PUBLISH` of the wire JSON with a subscriber connection on the channel.')
  out.push('')
  out.push('Commands:', '', '```', 'cd bench && npm install   # once (bench-only dependencies)', meta.command, '```', '')
  if (notes.length) out.push('## Notes', '', ...notes.map((n) => `- ${n}`), '')
  out.push('## The systems under test', '')
  out.push('- **bare ws** (`servers/bare-ws.mjs`): `ws` server; per tick one `JSON.stringify` of the full envelope (same fields as fastify-streams, `rev` included), one `Buffer`, then `for (c of clients) c.send(buf)`. The practical limit for a Node server, not a competitor.')
  out.push('- **Socket.IO** (`servers/socketio.mjs`): `socket.io` with `transports: [\'websocket\']`, `perMessageDeflate: false`, in-memory adapter, one room per group, `rawSocket.request = null`. The client sends `42["join",{"room":g}]`; the server joins the room and answers `joined` (or, in the sync scenario, `emit(\'sync\', items)`). Its frames are smaller (`42["update",{…}]`, no envelope): see bytes per delivery.')
  out.push('- **Motia** (`servers/motia.mjs`): `createServer()` of `@motiadev/core` 0.17.14-beta.196 (express + its `ws` socket server), run standalone: `LockedData` gets a plain object as its Redis client (only the trace/log streams keep a reference to it; the stream path never calls it), the stream is `storageType: \'custom\'` with a factory returning a fresh `MemoryStreamAdapter` whose `state` is one shared object (the shipped `MemoryStreamAdapterManager` hands out a new, empty adapter per call, so state would be lost between calls), analytics off. Publishes are `stream.set()` through Motia\'s stream wrapper (a `get` to choose create/update, the `set`, then `pushEvent`: one `JSON.stringify` per event, `socket.send(string)` per subscription). Its envelopes have no `"type":"stream"` field and its group sync no `id`; its memory `getGroup` scans every key of the shared state.')
  out.push('- **fastify-streams** (`servers/ours.mjs`): Fastify + the plugin from `dist/` (build fingerprint in the raw JSON: `serverInfo[].distHash`), `logger: false`, adapter memory (`KvStore in_memory`), SQLite (`KvStore file_based`, a temp file) or Redis (`RedisAdapter`). Publishes are `app.streams.set(stream, group, id, data)`.')
  out.push('- All servers load the same `ws` 8 with `bufferutil` and `utf-8-validate` (NODE_PATH points at `bench/node_modules`, so the plugin\'s `ws` finds them too).')
  out.push('')
  for (const sc of all) {
    out.push(`## ${sc.title}`, '')
    if (sc.kind === 'writes') out.push(writesSection(sc, sc.runs))
    else {
      const systems = sc.systems.filter((s) => sc.runs[s])
      if (!systems.length) {
        out.push('(no system available for this scenario)', '')
        continue
      }
      if (sc.kind === 'fanout') out.push(fanoutSection(sc, sc.runs, systems))
      if (sc.kind === 'burst') {
        out.push(burstSection(sc, sc.runs, systems))
        out.push('', 'How to read it: the servers publish in a loop that never yields to I/O (Socket.IO and bare ws call `emit`/`send` synchronously; Motia and fastify-streams `await set()` each time). bare ws and Motia write every frame to the socket as it is sent. fastify-streams queues what each socket is owed and flushes once the event loop turns (`setImmediate`) or once 64 KiB are queued for that socket, so each socket gets its frames in a few large writes: that is why its CPU per delivery is a fraction of the bare ws loop, and also why its latency is higher here (frames wait for the turn to end or the 64 KiB mark). Socket.IO buffers too, in its own way (see its RSS).')
      }
      if (sc.kind === 'idle') out.push(idleSection(sc, sc.runs, systems))
      if (sc.kind === 'sync') out.push(syncSection(sc, sc.runs, systems))
      if (sc.kind === 'twonode') out.push(twonodeSection(sc, sc.runs))
    }
    out.push(errorsOf(sc.runs), '')
  }
  out.push('## Targets of issue #5 (fastify-streams)', '', targetsSection(all, meta))
  out.push(`Raw results: \`bench/results/${meta.rawFile}\`.`, '')
  // The analysis of the targets (profiles, reasons for misses) is written by hand and kept across runs.
  const analysis = path.join(BENCH, 'ANALYSIS.md')
  if (fs.existsSync(analysis)) out.push(fs.readFileSync(analysis, 'utf8'))
  return out.join('\n')
}

// ---------------------------------------------------------------------------------------------------------

// Sections written by hand below this line of the report (other scripts' figures) are kept when it is rewritten.
const KEEP_MARK = '<!-- Written by hand below this line: kept when run.mjs rewrites this file. -->'
function writeReport (outFile, md) {
  const previous = fs.existsSync(outFile) ? fs.readFileSync(outFile, 'utf8') : ''
  const kept = previous.includes(KEEP_MARK) ? previous.slice(previous.indexOf(KEEP_MARK)) : ''
  fs.writeFileSync(outFile, kept ? `${md.trimEnd()}\n\n${kept}` : md)
}

let saveState = null
/** Writes the raw JSON (and, when final or interrupted, the Markdown report) of what has run so far. */
function save (final) {
  if (!saveState) return
  const { meta, all, addons, startedAt } = saveState
  const endedAt = Date.now()
  meta.addons = Object.entries(addons).map(([s, a]) => `${s}: bufferutil ${a.bufferutil ? 'yes' : 'no'}, utf-8-validate ${a['utf-8-validate'] ? 'yes' : 'no'}`).join('; ') || 'n/a'
  meta.quiet = { waitedMs: quietWaitMs, budgetMs: QUIET_BUDGET_MS }
  meta.startedAt = startedAt
  meta.endedAt = endedAt
  meta.complete = final === true
  fs.mkdirSync(path.join(BENCH, 'results'), { recursive: true })
  fs.writeFileSync(path.join(BENCH, 'results', meta.rawFile), JSON.stringify({ meta, notes, scenarios: all }, null, 1))
  if (final === false) return
  const extra = final === true ? [] : ['**Interrupted run**: only the runs finished before the interruption are reported.']
  const md = report(meta, all, startedAt, endedAt, [...extra, ...notes])
  const outFile = opt('out', null) || path.join(BENCH, SMOKE ? 'RESULTS-smoke.md' : 'RESULTS.md')
  writeReport(outFile, md)
  return outFile
}

async function main () {
  const startedAt = Date.now()
  const meta = {
    command: `node bench/run.mjs${args.length ? ' ' + args.join(' ') : ''}`,
    machine: machine(),
    smoke: SMOKE,
    runs: RUNS,
    params: P
  }
  await preflightOurs()
  const all = []
  const addons = {}
  meta.rawFile = `${SMOKE ? 'smoke' : 'full'}-${new Date(startedAt).toISOString().replace(/[:.]/g, '-')}.json`
  saveState = { meta, all, addons, startedAt }
  const log = (s) => process.stdout.write(`[${((Date.now() - startedAt) / 1000).toFixed(0).padStart(4)} s] ${s}\n`)
  log(`${SMOKE ? 'smoke' : 'full'} run, ${RUNS} repetition(s); systems: ${Object.keys(SYSTEMS).filter(wanted).join(', ')}${available.ours ? '' : ' (fastify-streams: no dist/)'}`)
  for (const sc of SCENARIOS) {
    if (ONLY && !ONLY.includes(sc.id)) continue
    const entry = { id: sc.id, title: sc.title, kind: sc.kind, systems: sc.systems, variants: sc.variants, params: sc.params, runs: {} }
    all.push(entry)
    const ctx = {}
    let units
    if (sc.kind === 'writes') units = sc.variants.filter((v) => wanted(v.system)).map((v) => ({ key: v.id, sys: v.system, variant: v }))
    else units = sc.systems.filter(wanted).map((s) => ({ key: s, sys: s }))
    if (!units.length) {
      log(`${sc.id}: skipped (no system available)`)
      continue
    }
    try {
      if (sc.kind === 'twonode' || (sc.kind === 'writes' && units.some((u) => u.variant.adapter === 'redis'))) {
        ctx.redis = await startRedis(sc.kind === 'twonode' ? 1 : 0)
      }
      for (let rep = 0; rep < RUNS; rep++) {
        for (const u of units) {
          const r = await runWithRetries(sc, u.sys, u.variant, ctx)
          ;(entry.runs[u.key] ||= []).push(r)
          for (const s of r.serverInfo || []) if (s.addons) addons[s.system] = s.addons
          log(`${sc.id} #${rep + 1} ${u.key}: ${summaryLine(sc, u.sys, r)}`)
          save(false)
        }
      }
    } catch (err) {
      entry.error = String(err && err.stack ? err.stack : err)
      notes.push(`${sc.id}: aborted: ${String(err && err.message ? err.message : err)}`)
      log(`${sc.id}: aborted: ${err && err.message}`)
    } finally {
      if (ctx.redis) await ctx.redis.stop().catch(() => {})
    }
  }
  const outFile = save(true)
  log(`wrote ${path.relative(process.cwd(), outFile)} and bench/results/${meta.rawFile}`)
}

/** --report=bench/results/<file>.json: rewrite the Markdown report from a raw results file, run nothing. */
function reportOnly (file) {
  const raw = JSON.parse(fs.readFileSync(file, 'utf8'))
  raw.meta.rawFile = path.basename(file)
  const md = report(raw.meta, raw.scenarios, raw.meta.startedAt ?? 0, raw.meta.endedAt ?? 0, raw.notes || [])
  const outFile = opt('out', null) || path.join(BENCH, raw.meta.smoke ? 'RESULTS-smoke.md' : 'RESULTS.md')
  writeReport(outFile, md)
  console.log(`wrote ${outFile}`)
}

try {
  const reportFile = opt('report', null)
  if (reportFile) reportOnly(reportFile)
  else await main()
} finally {
  killAll()
}
