// Group feeds against the socket path (issue 9). Needs `npm run build` (the server runs dist/).
//
//   node bench/feeds.mjs [--scenario storm|fanout|all] [--clients N] [--items N] [--changes N] [--rate N] [--seconds N] [--out FILE]
//
// storm  (reconnect storm): N clients follow a group of --items items on a SQLite server; the server is killed
//        (SIGKILL) and restarted on the same file, and --changes changes are made during the restart (by the new
//        server process, one after another, before it listens: what a client misses while it cannot be connected).
//        Feed readers (raw SSE) resume from their offset; socket clients (raw ws, the Motia protocol) reconnect and
//        re-join, i.e. a full sync. Measured: bytes the clients read on connections opened after the restart until
//        each has the last change (what the server sent them), and the time from the restarted server listening
//        until each client is current (p50/p99/max).
// fanout (live fan-out): N readers of one group on a memory server, --rate changes/s for --seconds, once over SSE
//        feeds and once over sockets. Measured: server CPU per delivery (/proc/<pid>/stat over changes × readers)
//        and delivery latency (each change carries its monotonic time of writing).
// Defaults are the sizes (1 000 clients, 10 000 items, 100 changes; 1 000 readers × 100/s for 10 s); the
// machine may be shared, so pass smaller ones for a check. The server runs in a child pinned to CPU 0, the clients
// in this process pinned to CPU 1; the open-file limit is raised for the clients when it is too low. Writes a
// report to --out (default bench/results/feeds-<time>.md) with the raw figures beside it (.json).
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import { cpus, tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { WebSocket } from 'ws'
import { nowNs, procCpuMs, watchParent } from './lib/common.mjs'
import { CLK_TCK, HAS_TASKSET, ensureFileLimit, pinSelf, startNode, stopChild } from './lib/procs.mjs'

const BENCH = path.dirname(fileURLToPath(import.meta.url))
const ROOT = path.dirname(BENCH)
const STREAM = 'bench'
const { values: args } = parseArgs({
  options: {
    scenario: { type: 'string', default: 'all' },
    clients: { type: 'string', default: '1000' },
    items: { type: 'string', default: '10000' },
    changes: { type: 'string', default: '100' },
    rate: { type: 'string', default: '100' },
    seconds: { type: 'string', default: '10' },
    out: { type: 'string' },
    server: { type: 'string' }
  }
})

// ---- the server (child process) ----

async function serve ({ sqlite, changes }) {
  const { default: Fastify } = await import('fastify')
  const { default: streams } = await import(new URL('../dist/index.js', import.meta.url).href)
  const adapter = sqlite === undefined
    ? { class: 'kv', config: { store_method: 'in_memory' } }
    : { class: 'kv', config: { store_method: 'file_based', file_path: sqlite } }
  const app = Fastify({ logger: false, forceCloseConnections: true })
  // Every client comes from one address: above the default connection limits.
  await app.register(streams, { adapter, feeds: { max_live_readers: 1_000_000 }, max_connections: 1_000_000, max_connections_per_ip: 1_000_000 })
  const pad = 'y'.repeat(110)
  app.post('/bench/seed', async (request) => {
    const { group, items } = request.body
    for (let i = 0; i < items; i += 500) {
      await Promise.all(Array.from({ length: Math.min(500, items - i) }, (_, k) => app.streams.set(STREAM, group, `item-${i + k}`, { id: `item-${i + k}`, n: i + k, title: `item number ${i + k}`, done: false, pad })))
    }
    return {}
  })
  app.post('/bench/publish', async (request) => {
    const { group, rate, seconds } = request.body
    const total = rate * seconds
    const start = performance.now()
    for (let i = 0; i < total; i++) {
      const due = start + (i * 1000) / rate
      const wait = due - performance.now()
      if (wait > 1) await new Promise(resolve => setTimeout(resolve, wait))
      // `ts` (monotonic ns, the same clock in every process of the host) comes first so readers find it cheaply.
      app.streams.set(STREAM, group, 'item-0', { ts: Number(process.hrtime.bigint()), id: 'item-0', seq: i, pad: 'x'.repeat(46), last: i === total - 1 }).catch(() => {})
    }
    return { published: total }
  })
  let changesMs = null
  if (changes !== undefined) {
    // The storm's changes, made while no client can be connected: each awaited, as an app's writes are.
    await app.ready()
    const started = performance.now()
    for (let i = 0; i < changes.count; i++) await app.streams.set(STREAM, changes.group, `item-${i}`, { id: `item-${i}`, n: i, title: `changed ${i}`, done: true, pad, last: i === changes.count - 1 })
    changesMs = performance.now() - started
  }
  // Node's default backlog (511) overflows when a thousand clients reconnect at once, and a dropped SYN waits 1 s,
  // 3 s, 7 s for its retransmission: the kernel's limit (net.core.somaxconn) instead, for both paths alike.
  await app.listen({ port: 0, host: '127.0.0.1', backlog: 4096 })
  process.stdout.write(`READY ${JSON.stringify({ port: app.server.address().port, pid: process.pid, changesMs })}\n`)
  watchParent()
}

function startServer (config) {
  return startNode([fileURLToPath(import.meta.url), '--server', JSON.stringify(config)], { cpu: 0 })
}

async function post (port, path, body) {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  if (!response.ok) throw new Error(`${path}: ${response.status}`)
  return await response.json()
}

// ---- clients ----

const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity })

const RETRY_FIRST_MS = 50
const RETRY_MAX_MS = 250

/**
 * Calls `connect` again, once per attempt however many of error/close fire for it, backing off as the official
 * client does (full jitter, ×1.3 per failed attempt) from 50 ms up to 250 ms: a thousand clients retrying every
 * 50 ms kept the runner's one core busy with refused connects. `retry.connected()` starts the back-off over.
 */
function retrier (reader, connect) {
  let delay = RETRY_FIRST_MS
  const retry = (attempt) => {
    if (attempt.retried || reader.closed) return
    attempt.retried = true
    setTimeout(connect, Math.random() * delay)
    delay = Math.min(delay * 1.3, RETRY_MAX_MS)
  }
  retry.connected = () => { delay = RETRY_FIRST_MS }
  return retry
}

/** Latency of each change received (from its `ts`), in µs, into `sink` when given. */
function recordLatencies (text, at, sink) {
  for (let i = text.indexOf('"ts":'); i >= 0; i = text.indexOf('"ts":', i + 5)) {
    const end = text.indexOf(',', i)
    // A change cut by the end of a chunk is skipped.
    if (end > i) sink((at - Number(text.slice(i + 5, end))) / 1000)
  }
}

const OFFSET_KEY = '"streamNextOffset":"'
const LAST_MARKER = '"last":true'

/** A raw SSE feed reader: keeps its offset, notices the `last` marker, reconnects from its offset when cut. */
function feedReader (portRef, group, offset, onCurrent, sink) {
  const reader = { offset, bytes: 0, current: false, closed: false, counting: false, connects: 0, ready: false }
  let tail = Buffer.alloc(0)
  const connect = () => {
    if (reader.closed) return
    const attempt = { retried: false }
    reader.connects++
    // Bytes are counted on connections opened after the restart (reader.counting), up to the last change.
    const counted = reader.counting
    const req = http.get({ host: '127.0.0.1', port: portRef.port, path: `/v1/groups/${STREAM}/${group}?offset=${reader.offset}&live=sse`, agent }, (res) => {
      if (res.statusCode !== 200) {
        res.resume()
        return retry(attempt)
      }
      retry.connected()
      res.on('data', (chunk) => {
        const at = nowNs()
        reader.ready = true
        // Bytes, not text: a storm brings every reader tens of KB at once, and the runner is one core.
        const bytes = tail.length === 0 ? chunk : Buffer.concat([tail, chunk])
        if (sink) recordLatencies(chunk.toString('latin1'), at, sink)
        const offsetAt = bytes.lastIndexOf(OFFSET_KEY)
        if (offsetAt >= 0) {
          const end = bytes.indexOf('"', offsetAt + OFFSET_KEY.length)
          if (end > 0) reader.offset = bytes.toString('latin1', offsetAt + OFFSET_KEY.length, end)
        }
        if (!reader.current && bytes.includes(LAST_MARKER)) {
          reader.current = true
          if (counted) reader.bytes += res.socket.bytesRead
          onCurrent(reader)
        }
        tail = bytes.subarray(Math.max(0, bytes.length - 200))
      })
      res.on('error', () => {})
      res.on('close', () => retry(attempt))
    })
    req.on('socket', (socket) => { socket.once('close', () => { if (counted && !reader.current) reader.bytes += socket.bytesRead }) })
    req.on('error', () => retry(attempt))
    reader.request = req
  }
  const retry = retrier(reader, connect)
  reader.close = () => {
    reader.closed = true
    reader.request?.destroy()
  }
  connect()
  return reader
}

/** A raw socket client of the Motia protocol: joins the group, re-joins (a full sync) after a reconnect. */
function socketReader (portRef, group, onCurrent, sink) {
  const reader = { bytes: 0, current: false, closed: false, counting: false, connects: 0, ready: false }
  const connect = () => {
    if (reader.closed) return
    reader.connects++
    const attempt = { retried: false }
    const ws = new WebSocket(`ws://127.0.0.1:${portRef.port}/`)
    const counted = reader.counting
    reader.ws = ws
    ws.on('open', () => {
      retry.connected()
      ws.send(JSON.stringify({ type: 'join', data: { subscriptionId: 's', streamName: STREAM, groupId: group } }))
    })
    ws.on('message', (data) => {
      const at = nowNs()
      // The first frame is the join's sync: the client is subscribed.
      reader.ready = true
      const text = data.toString()
      if (sink) recordLatencies(text, at, sink)
      if (!reader.current && text.includes('"last":true')) {
        reader.current = true
        if (counted) reader.bytes += ws._socket?.bytesRead ?? 0
        onCurrent(reader)
      }
    })
    ws.on('close', () => {
      if (counted && !reader.current) reader.bytes += ws._socket?.bytesRead ?? 0
      retry(attempt)
    })
    ws.on('error', () => {})
  }
  const retry = retrier(reader, connect)
  reader.close = () => {
    reader.closed = true
    reader.ws?.terminate()
  }
  connect()
  return reader
}

function percentile (sorted, p) {
  return sorted.length === 0 ? null : sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]
}

async function until (check, what, ms = 600_000) {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

const round = (x, digits = 2) => x == null || !Number.isFinite(x) ? null : Math.round(x * 10 ** digits) / 10 ** digits

// ---- scenarios ----

async function storm (kind, { clients, items, changes }) {
  const dir = mkdtempSync(path.join(tmpdir(), 'feeds-bench-'))
  const sqlite = path.join(dir, 'streams.db')
  let server = await startServer({ sqlite })
  const portRef = { port: server.port }
  const group = 'storm'
  try {
    await post(server.port, '/bench/seed', { group, items })
    // Everyone starts current: feed readers from the snapshot's offset, socket clients with their join sync.
    const snapshot = await fetch(`http://127.0.0.1:${server.port}/v1/groups/${STREAM}/${group}?offset=-1`)
    const offset = snapshot.headers.get('stream-next-offset')
    await snapshot.arrayBuffer()
    let restartedAt = 0
    const times = []
    const onCurrent = () => { if (restartedAt > 0) times.push(performance.now() - restartedAt) }
    const readers = []
    for (let i = 0; i < clients; i++) {
      readers.push(kind === 'feeds' ? feedReader(portRef, group, offset, onCurrent) : socketReader(portRef, group, onCurrent))
      if (i % 100 === 99) await new Promise(resolve => setTimeout(resolve, 50))
    }
    await until(() => readers.every(r => r.ready), `${kind}: every client subscribed`)
    await new Promise(resolve => setTimeout(resolve, 1000))

    for (const reader of readers) reader.counting = true
    await stopChild(server.child, { signal: 'SIGKILL' })
    server = await startServer({ sqlite, changes: { group, count: changes } })
    restartedAt = performance.now()
    portRef.port = server.port
    await until(() => readers.every(r => r.current), `${kind}: every client current`)
    const connects = readers.reduce((sum, r) => sum + r.connects, 0)
    for (const reader of readers) reader.close()
    const bytes = readers.reduce((sum, r) => sum + r.bytes, 0)
    const sorted = times.sort((a, b) => a - b)
    return { kind, clients, items, changes, bytes, bytesPerClient: Math.round(bytes / clients), connects, changesMs: round(server.changesMs, 0), p50Ms: round(percentile(sorted, 50), 0), p99Ms: round(percentile(sorted, 99), 0), maxMs: round(sorted.at(-1), 0) }
  } finally {
    await stopChild(server.child)
    rmSync(dir, { recursive: true, force: true })
  }
}

async function fanout (kind, { clients, rate, seconds }) {
  const server = await startServer({})
  const portRef = { port: server.port }
  const group = 'fan'
  try {
    const tail = (await fetch(`http://127.0.0.1:${server.port}/v1/groups/${STREAM}/${group}?offset=now`)).headers.get('stream-next-offset')
    const latencies = new Float64Array(rate * seconds * clients)
    let recorded = 0
    const sink = (us) => { if (recorded < latencies.length) latencies[recorded++] = us }
    let done = 0
    const readers = []
    for (let i = 0; i < clients; i++) {
      readers.push(kind === 'feeds' ? feedReader(portRef, group, tail, () => done++, sink) : socketReader(portRef, group, () => done++, sink))
      if (i % 100 === 99) await new Promise(resolve => setTimeout(resolve, 50))
    }
    await until(() => readers.every(r => r.ready), `${kind}: every reader subscribed`, 120_000)
    await new Promise(resolve => setTimeout(resolve, 1000))
    const cpuBefore = procCpuMs(server.pid, CLK_TCK)
    const runnerBefore = process.cpuUsage()
    const started = performance.now()
    const { published } = await post(server.port, '/bench/publish', { group, rate, seconds })
    await until(() => done === clients, `${kind}: every reader got the last change`, 60_000)
    const cpuMs = procCpuMs(server.pid, CLK_TCK) - cpuBefore
    const runner = process.cpuUsage(runnerBefore)
    const wallMs = performance.now() - started
    for (const reader of readers) reader.close()
    const sorted = latencies.subarray(0, recorded).sort()
    return {
      kind,
      clients,
      rate,
      seconds,
      deliveries: recorded,
      deliveredPct: round((100 * recorded) / (published * clients), 1),
      cpuUsPerDelivery: round((cpuMs * 1000) / (published * clients), 3),
      latencyMs: { p50: round(percentile(sorted, 50) / 1000), p99: round(percentile(sorted, 99) / 1000), max: round(sorted.at(-1) / 1000) },
      runnerCpuPct: Math.round((runner.user + runner.system) / 10 / wallMs)
    }
  } finally {
    await stopChild(server.child)
  }
}

/** Runs a scenario for feeds then sockets, printing each result; answers both. */
async function both (scenario, sizes) {
  const results = []
  for (const kind of ['feeds', 'sockets']) {
    const result = await scenario(kind, sizes)
    console.log(JSON.stringify(result))
    results.push(result)
  }
  return results
}

function report (meta, storms, fanouts) {
  const lines = [
    '# Group feeds vs sockets (issue 9)',
    '',
    `Made by \`${meta.command}\` on ${meta.date} (${meta.cpu}, ${meta.cores} cores, Node ${meta.node}; ` +
      `${meta.pinned ? 'server pinned to CPU 0, clients to CPU 1' : 'not pinned'}; \`ulimit -n\` ${meta.fileLimit}).`,
    ''
  ]
  if (storms) {
    const [feeds, sockets] = storms
    lines.push(`## Reconnect storm: ${feeds.clients.toLocaleString('en-US')} clients on a ${feeds.items.toLocaleString('en-US')}-item group, SQLite killed and restarted, ${feeds.changes} changes made during the restart (in ${feeds.changesMs} ms, before the new server listens)`, '',
      '| | feeds (resume by offset) | sockets (full re-sync) | ratio |', '|---|---|---|---|',
      `| bytes read after the restart until current | ${(feeds.bytes / 2 ** 20).toFixed(2)} MB (${feeds.bytesPerClient.toLocaleString('en-US')} B per client) | ${(sockets.bytes / 2 ** 20).toFixed(2)} MB (${sockets.bytesPerClient.toLocaleString('en-US')} B per client) | ${(sockets.bytes / feeds.bytes).toFixed(1)}× fewer (target ≥ 50×: ${sockets.bytes / feeds.bytes >= 50 ? 'met' : '**missed**'}) |`,
      `| time from the restarted server listening to current, p50 / p99 / max | ${feeds.p50Ms} / ${feeds.p99Ms} / ${feeds.maxMs} ms | ${sockets.p50Ms} / ${sockets.p99Ms} / ${sockets.maxMs} ms | feeds p99 < 1 s: ${feeds.p99Ms < 1000 ? 'met' : '**missed**'} |`,
      `| connections opened in all | ${feeds.connects.toLocaleString('en-US')} | ${sockets.connects.toLocaleString('en-US')} | |`, '')
  }
  if (fanouts) {
    const [feeds, sockets] = fanouts
    lines.push(`## Live fan-out: ${feeds.clients.toLocaleString('en-US')} readers × ${feeds.rate} changes/s for ${feeds.seconds} s (memory)`, '',
      '| | feeds (SSE) | sockets | ratio |', '|---|---|---|---|',
      `| server CPU per delivery | ${feeds.cpuUsPerDelivery} µs | ${sockets.cpuUsPerDelivery} µs | ${(feeds.cpuUsPerDelivery / sockets.cpuUsPerDelivery).toFixed(2)}× |`,
      `| delivered | ${feeds.deliveredPct} % | ${sockets.deliveredPct} % | |`,
      `| latency p50 / p99 / max | ${feeds.latencyMs.p50} / ${feeds.latencyMs.p99} / ${feeds.latencyMs.max} ms | ${sockets.latencyMs.p50} / ${sockets.latencyMs.p99} / ${sockets.latencyMs.max} ms | |`,
      `| clients' CPU (one core) | ${feeds.runnerCpuPct} % | ${sockets.runnerCpuPct} % | |`, '')
  }
  lines.push(`Raw figures: \`${path.relative(ROOT, meta.rawFile)}\`.`, '')
  return lines.join('\n')
}

async function run () {
  const sizes = Object.fromEntries(['clients', 'items', 'changes', 'rate', 'seconds'].map(key => [key, Number(args[key])]))
  // Each client holds a socket here (and one in the server, which inherits the limit).
  const fileLimit = ensureFileLimit(sizes.clients * 2 + 1000)
  if (fileLimit < sizes.clients + 200) throw new Error(`ulimit -n is ${fileLimit}: too low for ${sizes.clients} clients`)
  const pinned = HAS_TASKSET && pinSelf(1)
  const started = new Date()
  const out = args.out ?? path.join(BENCH, 'results', `feeds-${started.toISOString().replace(/[:.]/g, '-')}.md`)
  const meta = {
    command: `node bench/feeds.mjs ${process.argv.slice(2).join(' ')}`.trim(),
    date: started.toISOString().slice(0, 16).replace('T', ' ') + ' UTC',
    cpu: cpus()[0]?.model,
    cores: cpus().length,
    node: process.version,
    pinned,
    fileLimit,
    sizes,
    rawFile: out.replace(/\.md$/, '') + '.json'
  }
  let storms = null
  let fanouts = null
  if (args.scenario === 'all' || args.scenario === 'storm') {
    storms = await both(storm, sizes)
    console.log(`storm: feeds read ${(storms[1].bytes / storms[0].bytes).toFixed(1)}× fewer bytes than sockets; p99 catch-up ${storms[0].p99Ms} ms vs ${storms[1].p99Ms} ms`)
  }
  if (args.scenario === 'all' || args.scenario === 'fanout') {
    fanouts = await both(fanout, sizes)
    console.log(`fan-out: SSE ${fanouts[0].cpuUsPerDelivery} µs vs socket ${fanouts[1].cpuUsPerDelivery} µs CPU per delivery (${(fanouts[0].cpuUsPerDelivery / fanouts[1].cpuUsPerDelivery).toFixed(2)}×)`)
  }
  mkdirSync(path.dirname(out), { recursive: true })
  writeFileSync(meta.rawFile, JSON.stringify({ meta, storms, fanouts }, null, 1))
  writeFileSync(out, report(meta, storms, fanouts))
  console.log(`wrote ${out} and ${meta.rawFile}`)
}

if (args.server !== undefined) await serve(JSON.parse(args.server))
else await run()
