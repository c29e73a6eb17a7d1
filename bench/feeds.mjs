// Group feeds against the socket path (issue 9). Needs `npm run build` (the server runs dist/).
//
//   node bench/feeds.mjs [--scenario storm|fanout|all] [--clients N] [--items N] [--changes N] [--rate N] [--seconds N]
//
// storm  (reconnect storm): N clients follow a group of --items items on a SQLite server; the server is killed
//        (SIGKILL) and restarted on the same file while --changes changes are made. Feed readers (raw SSE) resume
//        from their offset; socket clients (raw ws, the Motia protocol) reconnect and re-join, i.e. a full sync.
//        Measured: bytes the clients read after the restart until each has the last change, and the time from the
//        restarted server listening until each client is current (p50/p99/max).
// fanout (live fan-out): N readers of one group on a memory server, --rate changes/s for --seconds, once over SSE
//        feeds and once over sockets. Measured: server CPU per delivery (user+system over changes × readers).
// Defaults are the sizes (1 000 clients, 10 000 items, 100 changes; 1 000 readers × 100/s); the machine is
// shared, so pass smaller ones for a check. Clients run in this process, the server in a child.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import http from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { WebSocket } from 'ws'

const STREAM = 'bench'
const { values: args } = parseArgs({
  options: {
    scenario: { type: 'string', default: 'all' },
    clients: { type: 'string', default: '1000' },
    items: { type: 'string', default: '10000' },
    changes: { type: 'string', default: '100' },
    rate: { type: 'string', default: '100' },
    seconds: { type: 'string', default: '10' },
    server: { type: 'string' }
  }
})

// ---- the server (child process) ----

async function serve ({ sqlite }) {
  const { default: Fastify } = await import('fastify')
  const { default: streams } = await import(new URL('../dist/index.js', import.meta.url).href)
  const adapter = sqlite === undefined
    ? { class: 'kv', config: { store_method: 'in_memory' } }
    : { class: 'kv', config: { store_method: 'file_based', file_path: sqlite } }
  const app = Fastify({ logger: false, forceCloseConnections: true })
  await app.register(streams, { adapter, feeds: { max_live_readers: 100_000 } })
  const pad = 'y'.repeat(110)
  app.post('/bench/seed', async (request) => {
    const { group, items } = request.body
    for (let i = 0; i < items; i += 500) {
      await Promise.all(Array.from({ length: Math.min(500, items - i) }, (_, k) => app.streams.set(STREAM, group, `item-${i + k}`, { id: `item-${i + k}`, n: i + k, title: `item number ${i + k}`, done: false, pad })))
    }
    return {}
  })
  app.post('/bench/changes', async (request) => {
    const { group, changes } = request.body
    for (let i = 0; i < changes; i++) await app.streams.set(STREAM, group, `item-${i}`, { id: `item-${i}`, n: i, title: `changed ${i}`, done: true, pad, last: i === changes - 1 })
    return {}
  })
  app.post('/bench/publish', async (request) => {
    const { group, rate, seconds } = request.body
    const before = process.cpuUsage()
    const total = rate * seconds
    const start = performance.now()
    for (let i = 0; i < total; i++) {
      const due = start + (i * 1000) / rate
      const wait = due - performance.now()
      if (wait > 1) await new Promise(resolve => setTimeout(resolve, wait))
      app.streams.set(STREAM, group, 'item-0', { id: 'item-0', seq: i, pad: 'x'.repeat(46), last: i === total - 1 }).catch(() => {})
    }
    // Let the deliveries drain before reading the CPU clock.
    await new Promise(resolve => setTimeout(resolve, 1500))
    const cpu = process.cpuUsage(before)
    return { cpuMs: (cpu.user + cpu.system) / 1000, published: total }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  process.stdout.write(`listening ${app.server.address().port}\n`)
  // Gone with the runner, even when it dies.
  process.stdin.on('end', () => process.exit(0)).resume()
}

function startServer (config) {
  const child = spawn(process.execPath, [new URL(import.meta.url).pathname, '--server', JSON.stringify(config)], { stdio: ['pipe', 'pipe', 'inherit'] })
  return new Promise((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (chunk) => {
      out += chunk
      const match = /listening (\d+)/.exec(out)
      if (match) resolve({ child, port: Number(match[1]) })
    })
    child.once('exit', (code) => reject(new Error(`server exited ${code}`)))
  })
}

async function stop (server, signal = 'SIGTERM') {
  const exited = new Promise(resolve => server.child.once('close', resolve))
  server.child.kill(signal)
  await exited
}

async function post (port, path, body) {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  if (!response.ok) throw new Error(`${path}: ${response.status}`)
  return await response.json()
}

// ---- clients ----

const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity })

/** A raw SSE feed reader: keeps its offset, notices the `last` marker, reconnects from its offset when cut. */
function feedReader (portRef, group, offset, onCurrent) {
  const reader = { offset, bytes: 0, current: false, closed: false, counting: false }
  let tail = ''
  const connect = () => {
    if (reader.closed) return
    // Bytes are counted on connections opened after the restart (reader.counting), up to the last change.
    const counted = reader.counting
    const req = http.get({ host: '127.0.0.1', port: portRef.port, path: `/v1/groups/${STREAM}/${group}?offset=${reader.offset}&live=sse`, agent }, (res) => {
      if (res.statusCode !== 200) {
        res.resume()
        return setTimeout(connect, 50)
      }
      res.setEncoding('utf8')
      res.on('data', (chunk) => {
        const text = tail + chunk
        const offsets = [...text.matchAll(/"streamNextOffset":"([^"]+)"/g)]
        if (offsets.length > 0) reader.offset = offsets[offsets.length - 1][1]
        if (!reader.current && text.includes('"last":true')) {
          reader.current = true
          if (counted) reader.bytes += res.socket.bytesRead
          onCurrent(reader)
        }
        tail = text.slice(-200)
      })
      res.on('close', () => setTimeout(connect, 20))
    })
    req.on('socket', (socket) => { socket.on('close', () => { if (counted && !reader.current) reader.bytes += socket.bytesRead }) })
    req.on('error', () => setTimeout(connect, 50))
  }
  reader.connect = connect
  reader.close = () => { reader.closed = true }
  connect()
  return reader
}

/** A raw socket client of the Motia protocol: joins the group, re-joins (a full sync) after a reconnect. */
function socketReader (portRef, group, onCurrent, { countFrames = false } = {}) {
  const reader = { bytes: 0, current: false, closed: false, counting: false, frames: 0 }
  const connect = () => {
    if (reader.closed) return
    const ws = new WebSocket(`ws://127.0.0.1:${portRef.port}/`)
    const counted = reader.counting
    reader.ws = ws
    ws.on('open', () => ws.send(JSON.stringify({ type: 'join', data: { subscriptionId: 's', streamName: STREAM, groupId: group } })))
    ws.on('message', (data) => {
      if (countFrames) reader.frames++
      if (!reader.current && data.toString().includes('"last":true')) {
        reader.current = true
        if (counted) reader.bytes += ws._socket?.bytesRead ?? 0
        onCurrent(reader)
      }
    })
    ws.on('close', () => {
      if (counted && !reader.current) reader.bytes += ws._socket?.bytesRead ?? 0
      setTimeout(connect, 20)
    })
    ws.on('error', () => {})
  }
  reader.close = () => {
    reader.closed = true
    reader.ws?.terminate()
  }
  connect()
  return reader
}

function percentile (values, p) {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]
}

async function until (check, what, ms = 600_000) {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

// ---- scenarios ----

async function storm (kind, { clients, items, changes }) {
  const dir = mkdtempSync(join(tmpdir(), 'feeds-bench-'))
  const sqlite = join(dir, 'streams.db')
  let server = await startServer({ sqlite })
  const portRef = { port: server.port }
  const group = 'storm'
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
  if (kind === 'sockets') await until(() => readers.every(r => r.ws?.readyState === WebSocket.OPEN), 'sockets open')
  await new Promise(resolve => setTimeout(resolve, 1000))

  for (const reader of readers) reader.counting = true
  await stop(server, 'SIGKILL')
  server = await startServer({ sqlite })
  portRef.port = server.port
  restartedAt = performance.now()
  await post(server.port, '/bench/changes', { group, changes })
  await until(() => readers.every(r => r.current), `${kind}: every client current`)
  for (const reader of readers) reader.close()
  await new Promise(resolve => setTimeout(resolve, 200))
  await stop(server, 'SIGTERM')
  rmSync(dir, { recursive: true, force: true })
  const bytes = readers.reduce((sum, r) => sum + r.bytes, 0)
  return { kind, clients, items, changes, bytes, p50Ms: percentile(times, 50), p99Ms: percentile(times, 99), maxMs: Math.max(...times) }
}

async function fanout (kind, { clients, rate, seconds }) {
  const server = await startServer({})
  const portRef = { port: server.port }
  const group = 'fan'
  const tail = (await fetch(`http://127.0.0.1:${server.port}/v1/groups/${STREAM}/${group}?offset=now`)).headers.get('stream-next-offset')
  let done = 0
  const readers = []
  for (let i = 0; i < clients; i++) {
    readers.push(kind === 'feeds' ? feedReader(portRef, group, tail, () => done++) : socketReader(portRef, group, () => done++))
    if (i % 100 === 99) await new Promise(resolve => setTimeout(resolve, 50))
  }
  await new Promise(resolve => setTimeout(resolve, 2000))
  const { cpuMs, published } = await post(server.port, '/bench/publish', { group, rate, seconds })
  await until(() => done === clients, `${kind}: every reader got the last change`, 60_000)
  for (const reader of readers) reader.close()
  await stop(server)
  return { kind, clients, rate, seconds, cpuUsPerDelivery: (cpuMs * 1000) / (published * clients) }
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

async function run () {
  const sizes = Object.fromEntries(Object.entries(args).filter(([key]) => key !== 'scenario').map(([key, value]) => [key, Number(value)]))
  if (args.scenario === 'all' || args.scenario === 'storm') {
    const [feeds, sockets] = await both(storm, sizes)
    console.log(`storm: feeds read ${(sockets.bytes / feeds.bytes).toFixed(1)}× fewer bytes than sockets; p99 catch-up ${feeds.p99Ms.toFixed(0)} ms vs ${sockets.p99Ms.toFixed(0)} ms`)
  }
  if (args.scenario === 'all' || args.scenario === 'fanout') {
    const [feeds, sockets] = await both(fanout, sizes)
    console.log(`fan-out: SSE ${feeds.cpuUsPerDelivery.toFixed(2)} µs vs socket ${sockets.cpuUsPerDelivery.toFixed(2)} µs CPU per delivery (${(feeds.cpuUsPerDelivery / sockets.cpuUsPerDelivery).toFixed(2)}×)`)
  }
}

if (args.server !== undefined) await serve(JSON.parse(args.server))
else await run()
