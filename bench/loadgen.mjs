// The load generator: one process, raw `ws` clients speaking the Motia streams protocol, Socket.IO's
// Engine.IO v4 text framing (websocket transport), or plain ws. It drives the servers under test through
// their control endpoint, and measures latency (HDR histogram, from the `ts` the server stamped at the
// scheduled publish time, process.hrtime.bigint() ns on both sides), deliveries, its own CPU, and the
// servers' CPU time and RSS from /proc.
//
// Usage: node loadgen.mjs '<json>'   (the runner builds the JSON; prints one `RESULT {json}` line)

import WebSocket from 'ws'
import hdr from 'hdr-histogram-js'
import { randomUUID } from 'node:crypto'
import fs from 'node:fs'
import {
  STREAM, FANOUT_GROUP, control, nowNs, procCpuMs, procRssKb, sleep, watchParent
} from './lib/common.mjs'

const cfg = JSON.parse(process.argv[2])
const CLK_TCK = cfg.clkTck || 100
const PER_ADDR = cfg.connsPerAddress || 15000

watchParent()

// ---------------------------------------------------------------------------------------------------------
// measurement sinks

function newHist () {
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: 3 })
}

/** Collects deliveries whose `ts` falls in [from, to). Latency in µs. */
function newSink (from = 0, to = Infinity) {
  return { from, to, hist: newHist(), count: 0, bytes: 0, before: 0, after: 0, firstRecvNs: 0, lastRecvNs: 0, other: 0 }
}

const TS = Buffer.from('"ts":')
function readTs (buf) {
  const i = buf.indexOf(TS)
  if (i < 0) return -1
  let j = i + 5
  let v = 0
  for (; j < buf.length; j++) {
    const c = buf[j]
    if (c < 48 || c > 57) break
    v = v * 10 + (c - 48)
  }
  return v
}

function deliver (sink, buf) {
  const ts = readTs(buf)
  if (ts < 0) {
    sink.other++
    return
  }
  if (ts < sink.from) {
    sink.before++
    return
  }
  if (ts >= sink.to) {
    sink.after++
    return
  }
  const now = nowNs()
  if (sink.count === 0) sink.firstRecvNs = now
  sink.lastRecvNs = now
  sink.count++
  sink.bytes += buf.length
  const us = Math.round((now - ts) / 1000)
  sink.hist.recordValue(us < 1 ? 1 : us)
}

function histSummary (h) {
  if (h.totalCount === 0) return { n: 0 }
  const ms = (v) => Math.round(v) / 1000
  return {
    n: h.totalCount,
    p50: ms(h.getValueAtPercentile(50)),
    p95: ms(h.getValueAtPercentile(95)),
    p99: ms(h.getValueAtPercentile(99)),
    p999: ms(h.getValueAtPercentile(99.9)),
    max: ms(h.maxValue),
    mean: Math.round(h.mean) / 1000,
    hdr: h.encodeIntoCompressedBase64 ? h.encodeIntoCompressedBase64() : undefined
  }
}

// ---------------------------------------------------------------------------------------------------------
// clients

const SYNC = Buffer.from('"type":"sync"')
const EIO_UPDATE = Buffer.from('42["update"')
const EIO_SYNC = Buffer.from('42["sync"')
const EIO_JOINED = Buffer.from('42["joined"')

let clientErrors = 0
let unexpectedCloses = 0
let firstClientError = null

function wsUrl (server) {
  if (server.protocol === 'eio') return `ws://127.0.0.1:${server.wsPort}${server.wsPath}?EIO=4&transport=websocket`
  return `ws://127.0.0.1:${server.wsPort}${server.wsPath}`
}

/**
 * Opens one client. Resolves with it once usable (ws/motia: open; eio: after the namespace connect `40`).
 * client.sink receives deliveries; client.join(group) resolves with the sync frame (or the join ack).
 */
function openClient (server, index) {
  // bind a source address only beyond the first PER_ADDR connections: an explicit bind() picks its ephemeral
  // port the slow way (a port free for every destination), which makes connecting several times slower
  const spread = index >= PER_ADDR ? { localAddress: `127.0.0.${1 + Math.floor(index / PER_ADDR)}` } : {}
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl(server), {
      perMessageDeflate: false,
      skipUTF8Validation: true,
      ...spread,
      handshakeTimeout: 30_000,
      maxPayload: 512 * 1024 * 1024
    })
    const c = { ws, sink: null, pending: null, subs: new Map(), server, closed: false }
    let ready = false
    const fail = (err) => {
      clientErrors++
      if (!firstClientError) firstClientError = String(err && err.message ? err.message : err)
      if (!ready) reject(err)
    }
    ws.on('error', fail)
    ws.on('close', () => {
      if (!c.closed) unexpectedCloses++
      if (!ready) reject(new Error('closed before ready'))
    })
    if (server.protocol === 'eio') {
      ws.on('message', (buf) => {
        const t = buf[0]
        if (t === 52 && buf[1] === 50) { // '42' event
          if (buf.indexOf(EIO_UPDATE) === 0) {
            if (c.sink) deliver(c.sink, buf)
          } else if (c.pending && (buf.indexOf(EIO_SYNC) === 0 || buf.indexOf(EIO_JOINED) === 0)) {
            const p = c.pending
            c.pending = null
            p(buf)
          } else if (c.sink) c.sink.other++
        } else if (t === 50) { // '2' ping
          ws.send('3')
        } else if (t === 48) { // '0' open
          ws.send('40')
        } else if (t === 52 && buf[1] === 48) { // '40' connected
          ready = true
          resolve(c)
        } else if (t === 52 && buf[1] === 52) { // '44' connect error
          fail(new Error('socket.io connect error ' + buf.toString()))
        }
      })
    } else if (server.protocol === 'motia') {
      ws.on('open', () => { ready = true; resolve(c) })
      ws.on('message', (buf) => {
        if (c.pending && buf.indexOf(SYNC) >= 0) {
          const p = c.pending
          c.pending = null
          p(buf)
        } else if (c.sink) deliver(c.sink, buf)
      })
    } else {
      ws.on('open', () => { ready = true; resolve(c) })
      ws.on('message', (buf) => { if (c.sink) deliver(c.sink, buf) })
    }
  })
}

/** Sends a join; resolves with the sync frame (motia), the join ack or sync (eio), or at once (ws). */
function join (c, group) {
  const p = c.server.protocol
  if (p === 'ws') return Promise.resolve(null)
  return new Promise((resolve) => {
    c.pending = resolve
    if (p === 'motia') {
      const subscriptionId = randomUUID()
      c.subs.set(group, subscriptionId)
      c.ws.send(JSON.stringify({ type: 'join', data: { streamName: STREAM, groupId: group, subscriptionId } }))
    } else {
      c.ws.send(`42${JSON.stringify(['join', { room: group }])}`)
    }
  })
}

function leave (c, group) {
  const p = c.server.protocol
  if (p === 'motia') {
    const subscriptionId = c.subs.get(group)
    c.subs.delete(group)
    c.ws.send(JSON.stringify({ type: 'leave', data: { streamName: STREAM, groupId: group, subscriptionId } }))
  } else if (p === 'eio') {
    c.ws.send(`42${JSON.stringify(['leave', { room: group }])}`)
  }
}

async function withTimeout (promise, ms, what) {
  let timer
  const t = new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(`timeout: ${what} after ${ms} ms`)), ms) })
  try {
    return await Promise.race([promise, t])
  } finally {
    clearTimeout(timer)
  }
}

/** Opens n clients (indexes offset..offset+n-1) with at most `concurrency` handshakes in flight. */
async function openMany (server, n, offset = 0, concurrency = 200) {
  const clients = new Array(n)
  let next = 0
  const worker = async () => {
    while (next < n) {
      const i = next++
      clients[i] = await openClient(server, offset + i)
    }
  }
  const workers = []
  for (let w = 0; w < Math.min(concurrency, n); w++) workers.push(worker())
  await withTimeout(Promise.all(workers), 120_000, `opening ${n} connections`)
  return clients
}

/** Joins every client to its group (groupOf(i)), at most `concurrency` joins in flight. */
async function joinMany (clients, groupOf, concurrency = 500) {
  let next = 0
  const worker = async () => {
    while (next < clients.length) {
      const i = next++
      await join(clients[i], groupOf(i))
    }
  }
  const workers = []
  for (let w = 0; w < Math.min(concurrency, clients.length); w++) workers.push(worker())
  await withTimeout(Promise.all(workers), 120_000, `joining ${clients.length} clients`)
}

function closeAll (clients) {
  for (const c of clients) {
    if (!c) continue
    c.closed = true
    c.ws.terminate()
  }
}

// ---------------------------------------------------------------------------------------------------------
// CPU / RSS probes

/** Busy CPU time of the whole machine (all CPUs), ms, from /proc/stat. */
function machineBusyMs () {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0].trim().split(/\s+/).slice(1).map(Number)
  // user nice system idle iowait irq softirq steal
  const busy = line[0] + line[1] + line[2] + line[5] + line[6] + line[7]
  return busy * 1000 / CLK_TCK
}

function probe (pids) {
  return {
    wallNs: nowNs(),
    gen: process.cpuUsage(),
    server: pids.map((pid) => procCpuMs(pid, CLK_TCK)),
    machine: machineBusyMs(),
    known: (cfg.knownPids || []).map((pid) => { try { return procCpuMs(pid, CLK_TCK) } catch { return 0 } })
  }
}

function since (p0, p1 = probe(p0.pids)) {
  const wallMs = (p1.wallNs - p0.wallNs) / 1e6
  const genCpuMs = (p1.gen.user - p0.gen.user + p1.gen.system - p0.gen.system) / 1000
  const serverCpuMs = p1.server.reduce((a, v, i) => a + v - p0.server[i], 0)
  const knownMs = p1.known.reduce((a, v, i) => a + v - p0.known[i], 0)
  // CPU used by anything else on the machine (other processes, noisy neighbours) during the window
  const foreignMs = Math.max(0, (p1.machine - p0.machine) - serverCpuMs - genCpuMs - knownMs)
  return {
    foreignCpuPct: Math.round(1000 * foreignMs / wallMs) / 10,
    wallMs: Math.round(wallMs),
    genCpuMs: Math.round(genCpuMs),
    genCpuPct: Math.round(1000 * genCpuMs / wallMs) / 10,
    serverCpuMs: Math.round(serverCpuMs),
    knownCpuMs: Math.round(knownMs),
    serverCpuPct: Math.round(1000 * serverCpuMs / wallMs) / 10
  }
}

function probeOf (pids) {
  const p = probe(pids)
  p.pids = pids
  return p
}

async function waitFor (cond, timeoutMs, stepMs = 10) {
  const end = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > end) return false
    await sleep(stepMs)
  }
  return true
}

function efficiency (deliveries, serverCpuMs) {
  return {
    cpuUsPerDelivery: deliveries ? Math.round(1000 * 1000 * serverCpuMs / deliveries) / 1000 : null,
    deliveriesPerCpuSec: serverCpuMs ? Math.round(deliveries / (serverCpuMs / 1000)) : null
  }
}

// ---------------------------------------------------------------------------------------------------------
// scenarios

/** Expected ticks of a ticker(rate, durationMs, startNs) whose scheduled time is in [from, to). */
function ticksInWindow (rate, durationMs, startNs, from, to) {
  const periodNs = 1e9 / rate
  const n = Math.round(rate * durationMs / 1000)
  let count = 0
  for (let k = 0; k < n; k++) {
    const ts = Math.round(startNs + k * periodNs)
    if (ts >= from && ts < to) count++
  }
  return count
}

/** A paced publish starting 200 ms from now: warm-up, then the measured window [from, to) and its tick count. */
function publishWindow (rate, warmMs, measureMs) {
  const startNs = nowNs() + 200e6
  const from = startNs + warmMs * 1e6
  const to = from + measureMs * 1e6
  const durationMs = warmMs + measureMs
  return { startNs, from, to, durationMs, ticks: ticksInWindow(rate, durationMs, startNs, from, to) }
}

async function fanout ({ subs, rate, warmMs, measureMs, drainMs = 3000 }) {
  const server = cfg.servers[0]
  await control(server.ctlPort, 'prepare', { group: FANOUT_GROUP })
  const tc0 = nowNs()
  const clients = await openMany(server, subs)
  await joinMany(clients, () => FANOUT_GROUP)
  const connectMs = (nowNs() - tc0) / 1e6
  await sleep(300)

  const { startNs, from, to, durationMs, ticks } = publishWindow(rate, warmMs, measureMs)
  const expected = ticks * subs
  const sink = newSink(from, to)
  for (const c of clients) c.sink = sink

  const pub = control(server.ctlPort, 'publish', { rate, durationMs, startNs }, durationMs + 60_000)
  await sleep(Math.max(0, (from - nowNs()) / 1e6))
  const p0 = probeOf([server.pid])
  await control(server.ctlPort, 'stats', { reset: true })
  const pubResult = await pub
  await waitFor(() => sink.count >= expected, drainMs)
  const window = since(p0)
  const stats = await control(server.ctlPort, 'stats', {})
  const rssKb = procRssKb(server.pid)
  closeAll(clients)
  return {
    subs,
    rate,
    warmMs,
    measureMs,
    connectMs: Math.round(connectMs),
    published: pubResult.n,
    publishErrors: pubResult.errors || 0,
    expected,
    deliveries: sink.count,
    deliveryPct: Math.round(10000 * sink.count / expected) / 100,
    deliveriesPerSec: Math.round(sink.count / (measureMs / 1000)),
    bytesPerDelivery: sink.count ? Math.round(sink.bytes / sink.count) : null,
    latency: histSummary(sink.hist),
    ...window,
    ...efficiency(sink.count, window.serverCpuMs),
    serverRssKb: rssKb,
    serverEventLoopP99Ms: stats.eventLoopP99Ms,
    other: sink.other
  }
}

async function burst ({ subs, count, timeoutMs = 60_000 }) {
  const server = cfg.servers[0]
  await control(server.ctlPort, 'prepare', { group: FANOUT_GROUP })
  const clients = await openMany(server, subs)
  await joinMany(clients, () => FANOUT_GROUP)
  await sleep(300)
  const startNs = nowNs() + 100e6
  const sink = newSink(startNs - 1, Infinity)
  for (const c of clients) c.sink = sink
  const expected = count * subs
  const p0 = probeOf([server.pid])
  const res = await control(server.ctlPort, 'burst', { count, startNs }, timeoutMs + 10_000)
  const done = await waitFor(() => sink.count >= expected, timeoutMs)
  const window = since(p0)
  const rssKb = procRssKb(server.pid)
  closeAll(clients)
  const completionMs = sink.count ? (sink.lastRecvNs - startNs) / 1e6 : null
  return {
    subs,
    count,
    expected,
    deliveries: sink.count,
    deliveryPct: Math.round(10000 * sink.count / expected) / 100,
    timedOut: !done,
    publishLoopMs: Math.round(res.elapsedNs / 1e5) / 10,
    completionMs: completionMs && Math.round(completionMs),
    deliveriesPerSec: completionMs ? Math.round(sink.count / (completionMs / 1000)) : null,
    bytesPerDelivery: sink.count ? Math.round(sink.bytes / sink.count) : null,
    latency: histSummary(sink.hist),
    ...window,
    ...efficiency(sink.count, window.serverCpuMs),
    serverRssKb: rssKb
  }
}

async function idle ({ steps, holdMs = 2000 }) {
  const server = cfg.servers[0]
  await control(server.ctlPort, 'prepare', { group: FANOUT_GROUP })
  const g0 = await control(server.ctlPort, 'gc')
  await sleep(200)
  const baseRssKb = procRssKb(server.pid)
  const baseHeap = g0.mem.heapUsed
  const clients = []
  const out = { baseRssKb, steps: [] }
  for (const n of steps) {
    const add = n - clients.length
    const t0 = nowNs()
    const more = await openMany(server, add, clients.length)
    await joinMany(more, () => FANOUT_GROUP)
    const ms = (nowNs() - t0) / 1e6
    clients.push(...more)
    await sleep(300)
    const p0 = probeOf([server.pid])
    await sleep(holdMs)
    const hold = since(p0)
    const g = await control(server.ctlPort, 'gc')
    await sleep(200)
    const rssKb = procRssKb(server.pid)
    out.steps.push({
      conns: n,
      connectSubscribePerSec: Math.round(add / (ms / 1000)),
      rssKb,
      rssPerConnKb: Math.round(100 * (rssKb - baseRssKb) / n) / 100,
      heapPerConnKb: Math.round(100 * (g.mem.heapUsed - baseHeap) / 1024 / n) / 100,
      idleCpuPct: hold.serverCpuPct,
      genCpuPct: hold.genCpuPct
    })
  }
  out.unexpectedCloses = unexpectedCloses
  closeAll(clients)
  return out
}

function syncCount (server, buf) {
  // validation only (not timed): parse the frame and count the items
  if (server.protocol === 'eio') return JSON.parse(buf.toString('utf8', 2))[1].length
  return JSON.parse(buf.toString()).event.data.length
}

async function sync ({ groups }) {
  const server = cfg.servers[0]
  const out = []
  for (const g of groups) {
    const t0 = nowNs()
    await control(server.ctlPort, 'seed', { group: g.group, count: g.count }, 300_000)
    const seedMs = (nowNs() - t0) / 1e6
    const r = { group: g.group, items: g.count, seedMs: Math.round(seedMs) }
    // alone: one client joins, waits for the sync, leaves; repeated
    const [c] = await openMany(server, 1, 0)
    const single = newHist()
    let bytes = 0
    let okCount = true
    const p0 = probeOf([server.pid])
    for (let i = 0; i < g.single; i++) {
      const s = nowNs()
      const buf = await withTimeout(join(c, g.group), 60_000, 'sync')
      single.recordValue(Math.max(1, Math.round((nowNs() - s) / 1000)))
      if (i === 0) {
        bytes = buf.length
        okCount = syncCount(server, buf) === g.count
      }
      leave(c, g.group)
      await sleep(5)
    }
    const w = since(p0)
    closeAll([c])
    r.single = { ...histSummary(single), bytes, okCount, serverCpuMsPerSync: Math.round(10 * w.serverCpuMs / g.single) / 10 }
    // herd: `herd` clients join at once
    if (g.herd) {
      const clients = await openMany(server, g.herd, 1)
      await sleep(300)
      const herd = newHist()
      const totals = []
      let herdOk = true
      await control(server.ctlPort, 'stats', { reset: true })
      const hp0 = probeOf([server.pid])
      for (let rep = 0; rep < g.herdReps; rep++) {
        const s = nowNs()
        const results = await withTimeout(Promise.all(clients.map((cl) => join(cl, g.group).then((buf) => {
          herd.recordValue(Math.max(1, Math.round((nowNs() - s) / 1000)))
          return buf
        }))), 300_000, 'herd sync')
        totals.push((nowNs() - s) / 1e6)
        if (syncCount(server, results[results.length - 1]) !== g.count) herdOk = false
        for (const cl of clients) leave(cl, g.group)
        await sleep(300)
      }
      const hw = since(hp0)
      const stats = await control(server.ctlPort, 'stats', {})
      closeAll(clients)
      r.herd = {
        clients: g.herd,
        reps: g.herdReps,
        ...histSummary(herd),
        totalMs: totals.map((t) => Math.round(t)),
        okCount: herdOk,
        serverEventLoopP99Ms: stats.eventLoopP99Ms,
        serverEventLoopMaxMs: stats.eventLoopMaxMs,
        genCpuPct: hw.genCpuPct,
        serverCpuMs: hw.serverCpuMs
      }
    }
    out.push(r)
  }
  return { groups: out }
}

async function writes ({ subs, groups, durationMs, concurrency }) {
  const server = cfg.servers[0]
  let clients = []
  if (subs > 0) {
    clients = await openMany(server, subs)
    await joinMany(clients, (i) => 'w' + (i % groups))
    await sleep(300)
  }
  const sink = newSink(0, Infinity)
  for (const c of clients) c.sink = sink
  const p0 = probeOf([server.pid])
  const res = await control(server.ctlPort, 'writes', { durationMs, concurrency, groups }, durationMs + 60_000)
  const expected = subs > 0 ? res.ops * (subs / groups) : 0
  if (subs > 0) await waitFor(() => sink.count >= expected, 3000)
  const window = since(p0)
  closeAll(clients)
  const opsPerSec = Math.round(res.ops / (res.elapsedNs / 1e9))
  return {
    subs,
    groups,
    concurrency,
    durationMs,
    ops: res.ops,
    errors: res.errors,
    firstError: res.firstError,
    opsPerSec,
    pubsubReceived: res.pubsubReceived,
    expected,
    deliveries: sink.count,
    deliveryPct: expected ? Math.round(10000 * sink.count / expected) / 100 : null,
    latency: histSummary(sink.hist),
    ...window,
    serverCpuUsPerOp: res.ops ? Math.round(1000 * 1000 * window.serverCpuMs / res.ops) / 1000 : null
  }
}

async function twonode ({ subsPerNode, rate, warmMs, measureMs, drainMs = 3000 }) {
  const [a, b] = cfg.servers
  await control(a.ctlPort, 'prepare', { group: FANOUT_GROUP })
  await sleep(200)
  const ca = await openMany(a, subsPerNode, 0)
  const cb = await openMany(b, subsPerNode, subsPerNode)
  await joinMany(ca, () => FANOUT_GROUP)
  await joinMany(cb, () => FANOUT_GROUP)
  await sleep(300)
  const { startNs, from, to, durationMs, ticks } = publishWindow(rate, warmMs, measureMs)
  const expectedPerNode = ticks * subsPerNode
  const sa = newSink(from, to)
  const sb = newSink(from, to)
  for (const c of ca) c.sink = sa
  for (const c of cb) c.sink = sb
  const pub = control(a.ctlPort, 'publish', { rate, durationMs, startNs }, durationMs + 60_000)
  await sleep(Math.max(0, (from - nowNs()) / 1e6))
  const p0 = probeOf([a.pid, b.pid])
  const pubResult = await pub
  await waitFor(() => sa.count >= expectedPerNode && sb.count >= expectedPerNode, drainMs)
  const window = since(p0)
  closeAll([...ca, ...cb])
  const la = histSummary(sa.hist)
  const lb = histSummary(sb.hist)
  const total = sa.count + sb.count
  return {
    subsPerNode,
    rate,
    measureMs,
    published: pubResult.n,
    publishErrors: pubResult.errors || 0,
    firstPublishError: pubResult.firstError,
    expected: expectedPerNode * 2,
    deliveries: total,
    deliveryPct: Math.round(10000 * total / (expectedPerNode * 2)) / 100,
    deliveryPctLocal: Math.round(10000 * sa.count / expectedPerNode) / 100,
    deliveryPctRemote: Math.round(10000 * sb.count / expectedPerNode) / 100,
    latencyLocal: la,
    latencyRemote: lb,
    extraP50Ms: la.n && lb.n ? Math.round(1000 * (lb.p50 - la.p50)) / 1000 : null,
    extraP99Ms: la.n && lb.n ? Math.round(1000 * (lb.p99 - la.p99)) / 1000 : null,
    ...window,
    ...efficiency(total, window.serverCpuMs)
  }
}

// ---------------------------------------------------------------------------------------------------------

const scenarios = { fanout, burst, idle, sync, writes, twonode }

try {
  const fn = scenarios[cfg.scenario]
  if (!fn) throw new Error('unknown scenario ' + cfg.scenario)
  const result = await fn(cfg.params)
  result.clientErrors = clientErrors
  result.unexpectedCloses = result.unexpectedCloses ?? unexpectedCloses
  if (firstClientError) result.firstClientError = firstClientError
  process.stdout.write('RESULT ' + JSON.stringify(result) + '\n')
  process.exit(0)
} catch (err) {
  process.stdout.write('RESULT ' + JSON.stringify({ error: String(err && err.stack ? err.stack : err), clientErrors, firstClientError }) + '\n')
  process.exit(1)
}
