// Shared by the servers under test, the load generator and the runner.
// Every server publishes the same ~100-byte JSON payload, carrying `ts`: the scheduled publish time in
// process.hrtime.bigint() nanoseconds (CLOCK_MONOTONIC, shared by every process on the host).

import http from 'node:http'
import fs from 'node:fs'
import { monitorEventLoopDelay } from 'node:perf_hooks'

export const STREAM = 'bench'
export const FANOUT_GROUP = 'fan'
export const ITEM_ID = 'item-0'

const PAD = 'x'.repeat(46)

/** The fan-out payload: ~100 bytes of JSON, identical for every system. */
export function makePayload (seq, ts) {
  return { id: ITEM_ID, seq, ts, pad: PAD }
}

/** A sync-scenario item of ~200 bytes of JSON. */
export function makeItem (i) {
  return { id: 'item-' + i, n: i, title: 'item number ' + i, done: false, tags: ['bench', 'sync'], pad: 'y'.repeat(110) }
}

export const nowNs = () => Number(process.hrtime.bigint())

/**
 * Calls onTick(seq, scheduledNs) for k = 0..n-1 at startNs + k * period, catching up when late (open loop:
 * no coordinated omission). Resolves when all n ticks have run.
 */
export function ticker ({ rate, durationMs, startNs, onTick }) {
  const periodNs = 1e9 / rate
  const n = Math.round(rate * durationMs / 1000)
  let k = 0
  return new Promise((resolve) => {
    const tick = () => {
      const now = nowNs()
      while (k < n && startNs + k * periodNs <= now) {
        onTick(k, Math.round(startNs + k * periodNs))
        k++
      }
      if (k >= n) return resolve({ n, periodNs, startNs })
      const waitMs = Math.max(0, (startNs + k * periodNs - nowNs()) / 1e6)
      setTimeout(tick, Math.floor(waitMs))
    }
    tick()
  })
}

export function sleep (ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Waits until startNs (monotonic), then resolves. */
export async function sleepUntilNs (startNs) {
  const ms = (startNs - nowNs()) / 1e6
  if (ms > 1) await sleep(Math.floor(ms))
  while (nowNs() < startNs) await new Promise((resolve) => setImmediate(resolve))
}

/** /proc/<pid>/stat: user+system CPU of all threads, in ms (clock ticks of 10 ms). */
export function procCpuMs (pid, clkTck = 100) {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
  // fields after the comm: state(3) ... utime(14) stime(15): indexes 11 and 12 here
  return (Number(f[11]) + Number(f[12])) * 1000 / clkTck
}

/** /proc/<pid>/status VmRSS, in KiB. */
export function procRssKb (pid) {
  const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  const m = /VmRSS:\s+(\d+) kB/.exec(s)
  return m ? Number(m[1]) : NaN
}

/**
 * The control endpoint every server under test exposes on 127.0.0.1: POST /<name> with a JSON body runs
 * handlers[name](body) and answers its JSON result. Built-ins: info, gc, stats.
 */
export function startControl (handlers, info) {
  const eld = monitorEventLoopDelay({ resolution: 10 })
  eld.enable()
  let cpuMark = process.cpuUsage()
  const builtins = {
    info: async () => ({ ...info, pid: process.pid, node: process.version }),
    gc: async () => {
      if (global.gc) {
        for (let i = 0; i < 3; i++) {
          global.gc()
          await sleep(50)
        }
      }
      return { gc: !!global.gc, mem: process.memoryUsage(), rssKb: procRssKb(process.pid) }
    },
    stats: async (body) => {
      const cpu = process.cpuUsage(cpuMark)
      const out = {
        cpuUserUs: cpu.user,
        cpuSystemUs: cpu.system,
        eventLoopP99Ms: eld.percentile(99) / 1e6,
        eventLoopMaxMs: eld.max / 1e6,
        mem: process.memoryUsage()
      }
      if (body && body.reset) {
        eld.reset()
        cpuMark = process.cpuUsage()
      }
      return out
    }
  }
  const server = http.createServer((req, res) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (c) => { body += c })
    req.on('end', async () => {
      const name = req.url.slice(1)
      const fn = handlers[name] || builtins[name]
      try {
        if (!fn) throw new Error('unknown control command ' + name)
        const out = await fn(body ? JSON.parse(body) : {})
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(JSON.stringify(out ?? {}))
      } catch (err) {
        res.writeHead(500, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ error: String(err && err.stack ? err.stack : err) }))
      }
    })
  })
  server.keepAliveTimeout = 60_000
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve(server))
  })
}

/** Tells the runner the server is up: one `READY {json}` line on stdout. Exits when stdin closes. */
export function announceReady (info, onExit) {
  process.stdout.write('READY ' + JSON.stringify({ ...info, pid: process.pid }) + '\n')
  watchParent(onExit)
}

let watching = false
/** Exits when the parent closes our stdin (so nothing outlives a crashed runner), or on SIGTERM. */
export function watchParent (onExit) {
  if (watching) return
  watching = true
  const bye = () => {
    try { if (onExit) onExit() } catch {}
    process.exit(0)
  }
  process.stdin.on('end', bye)
  process.stdin.on('error', bye)
  process.stdin.resume()
  process.on('SIGTERM', bye)
  process.on('SIGINT', bye)
}

/** Calls a server's control endpoint. */
export async function control (port, name, body = {}, timeoutMs = 120_000) {
  const res = await fetch(`http://127.0.0.1:${port}/${name}`, {
    method: 'POST',
    body: JSON.stringify(body),
    headers: { 'content-type': 'application/json' },
    signal: AbortSignal.timeout(timeoutMs)
  })
  const out = await res.json()
  if (res.status !== 200) throw new Error(`control ${name} failed: ${out.error}`)
  return out
}

/** Runs `fn` with `concurrency` workers until `durationMs` has passed; returns { ops, elapsedNs, errors }. */
export async function closedLoop ({ durationMs, concurrency, fn, yieldEvery = 256 }) {
  const t0 = nowNs()
  const end = t0 + durationMs * 1e6
  let ops = 0
  let errors = 0
  let firstError = null
  let k = 0
  const worker = async () => {
    while (nowNs() < end) {
      const i = k++
      // let I/O (socket writes, Redis replies, deferred fan-out) run now and then, as a real app would
      if (i % yieldEvery === yieldEvery - 1) await new Promise((resolve) => setImmediate(resolve))
      try {
        await fn(i)
        ops++
      } catch (err) {
        errors++
        if (!firstError) firstError = String(err && err.message ? err.message : err)
        if (errors > 1000) return
      }
    }
  }
  const workers = []
  for (let w = 0; w < concurrency; w++) workers.push(worker())
  await Promise.all(workers)
  return { ops, errors, firstError, elapsedNs: nowNs() - t0 }
}

/** Which bufferutil / utf-8-validate the given ws copy would load (fairness check). */
export async function wsNativeAddons (wsEntryUrl) {
  const { createRequire } = await import('node:module')
  const req = createRequire(wsEntryUrl)
  const out = {}
  for (const name of ['bufferutil', 'utf-8-validate']) {
    try {
      out[name] = req.resolve(name)
    } catch {
      out[name] = null
    }
  }
  return out
}

/** The control handlers of a server that publishes synchronously (bare ws, Socket.IO): paced ticks and a burst. */
export function syncPublishHandlers (publishOne) {
  return {
    prepare: async () => ({}),
    publish: async ({ rate, durationMs, startNs }) => ticker({ rate, durationMs, startNs, onTick: publishOne }),
    burst: async ({ count, startNs }) => {
      await sleepUntilNs(startNs)
      const t0 = nowNs()
      for (let i = 0; i < count; i++) publishOne(i, nowNs())
      return { n: count, elapsedNs: nowNs() - t0 }
    }
  }
}
