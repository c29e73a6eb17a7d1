// Soak with churn (issue 10, proof): a server (dist/, its own process, --expose-gc) under two minutes of clients
// that connect, join, read, leave and go away, writers that set, update and delete, and some abuse (bad frames,
// refused origins, frame floods). Afterwards every client is gone: the server's RSS and heap, after a GC, must
// come back to their baseline (taken with the same data stored, before the churn).
//
//   npm run build && node bench/soak.mjs [--seconds 120] [--clients 200] [--warmup 15]
//
// Not part of `npm test`. Prints one JSON summary line; record it in bench/RESULTS.md.
import { fork } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { WebSocket } from 'ws'

const GROUPS = 50
const ITEMS_PER_GROUP = 20
const WRITES_PER_SECOND = 200
const CHANGE_LOG_FILL = 1300
/** RSS may settle a little above its baseline (allocator pages kept); past this it counts as growth. */
const RSS_TOLERANCE = 1.15
const HEAP_TOLERANCE = 1.10

function arg (name, fallback) {
  const at = process.argv.indexOf(`--${name}`)
  return at < 0 ? fallback : Number(process.argv[at + 1])
}

const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))
const pick = (n) => Math.floor(Math.random() * n)
const item = (group, i, n) => ({ id: `i${i}`, group, n, text: 'z'.repeat(64 + pick(128)) })

// ----- server process -------------------------------------------------------------------------------------

async function server () {
  const { default: Fastify } = await import('fastify')
  const { default: streams } = await import('../dist/index.js')
  const app = Fastify({ logger: false })
  await app.register(streams, { max_frame_rate: 200, frame_burst: 400, ping_interval_ms: 5000, max_connections_per_ip: 100_000 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const memory = () => {
    global.gc()
    global.gc()
    const rssKb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1])
    return { rssMiB: rssKb / 1024, heapMiB: process.memoryUsage().heapUsed / 2 ** 20, sockets: app.streams.connectionCount }
  }
  const writes = { set: 0, update: 0, delete: 0 }
  let writer = null
  process.on('message', async (message) => {
    switch (message.type) {
      case 'fill':
        // The items, then enough writes to fill every group's change log (the memory adapter keeps up to
        // 1.25 × 1000 entries a group): the baseline holds all the data the churn will hold.
        for (let g = 0; g < GROUPS; g++) {
          for (let k = 0; k < CHANGE_LOG_FILL; k++) await app.streams.set('soak', `g${g}`, `i${k % ITEMS_PER_GROUP}`, item(g, k % ITEMS_PER_GROUP, 0))
        }
        process.send({ type: 'filled' })
        break
      case 'write': {
        // Open loop at WRITES_PER_SECOND over the stored items: the stored data keeps its size.
        let n = 0
        writer = setInterval(() => {
          for (let k = 0; k < WRITES_PER_SECOND / 20; k++) {
            const g = pick(GROUPS)
            const i = pick(ITEMS_PER_GROUP)
            const roll = Math.random()
            const op = roll < 0.6
              ? app.streams.set('soak', `g${g}`, `i${i}`, item(g, i, ++n)).then(() => writes.set++)
              : roll < 0.9
                ? app.streams.update('soak', `g${g}`, `i${i}`, [{ type: 'set', path: 'n', value: ++n }]).then(() => writes.update++)
                : app.streams.delete('soak', `g${g}`, `i${i}`).then(() => app.streams.set('soak', `g${g}`, `i${i}`, item(g, i, ++n))).then(() => writes.delete++)
            op.catch((err) => { console.error('write failed', err); process.exit(1) })
          }
        }, 50)
        break
      }
      case 'stop':
        clearInterval(writer)
        break
      case 'memory':
        process.send({ type: 'memory', ...memory(), writes })
        break
      case 'exit':
        await app.close()
        process.exit(0)
    }
  })
  process.send({ type: 'ready', port: app.server.address().port })
}

// ----- load side ------------------------------------------------------------------------------------------

function ask (child, type, answer) {
  return new Promise(resolve => {
    const onMessage = (message) => { if (message.type === answer) { child.off('message', onMessage); resolve(message) } }
    child.on('message', onMessage)
    child.send({ type })
  })
}

/** One client's life: connect, join 1-4 subscriptions, read for a while, leave some, go away (cleanly or not). */
async function life (url, stats) {
  const abusive = Math.random() < 0.05
  const socket = new WebSocket(url, abusive && Math.random() < 0.5 ? { headers: { origin: 'https://evil.example' } } : {})
  socket.on('error', () => {})
  socket.on('message', () => { stats.frames++ })
  const opened = await new Promise(resolve => {
    socket.once('open', () => resolve(true))
    socket.once('unexpected-response', () => resolve(false))
    socket.once('close', () => resolve(false))
  })
  if (!opened) { stats.refused++; return }
  stats.connects++
  const subscriptions = []
  for (let s = 0, n = 1 + pick(4); s < n; s++) {
    const data = { subscriptionId: `s${s}`, streamName: 'soak', groupId: `g${pick(GROUPS)}`, ...(Math.random() < 0.3 ? { id: `i${pick(ITEMS_PER_GROUP)}` } : {}) }
    subscriptions.push(data)
    socket.send(JSON.stringify({ type: 'join', data }))
  }
  if (abusive) {
    // Bad frames, then a flood past the frame rate: the server closes the socket.
    for (let k = 0; k < 20; k++) socket.send('{"type":"join","data":' + 'x'.repeat(pick(100)))
    for (let k = 0; k < 1000 && socket.readyState === WebSocket.OPEN; k++) socket.send(JSON.stringify({ type: 'leave', data: subscriptions[0] }))
  }
  await sleep(200 + pick(2800))
  for (const data of subscriptions) if (Math.random() < 0.5 && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: 'leave', data }))
  if (Math.random() < 0.2) socket.terminate()
  else socket.close()
  await new Promise(resolve => socket.readyState === WebSocket.CLOSED ? resolve() : socket.once('close', resolve))
}

async function load () {
  const seconds = arg('seconds', 120)
  const clients = arg('clients', 200)
  const warmup = arg('warmup', 15)
  const child = fork(fileURLToPath(import.meta.url), ['--server'], { execArgv: ['--expose-gc'] })
  const { port } = await new Promise(resolve => child.once('message', resolve))
  const url = `ws://127.0.0.1:${port}/`
  await ask(child, 'fill', 'filled')
  const stats = { connects: 0, refused: 0, frames: 0 }
  /** Churn for `ms` with the writers on; then the writers stop, the clients are all gone, and memory is read. */
  async function churn (ms, onSample) {
    child.send({ type: 'write' })
    const end = Date.now() + ms
    const loops = Array.from({ length: clients }, async () => { while (Date.now() < end) await life(url, stats) })
    const sampler = setInterval(async () => onSample(await ask(child, 'memory', 'memory')), 15_000)
    await Promise.all([...loops, sleep(ms)])
    clearInterval(sampler)
    child.send({ type: 'stop' })
    await sleep(2000)
    return ask(child, 'memory', 'memory')
  }
  // A short churn first: the baseline then includes the code compiled and the pools sized for this load.
  const baseline = await churn(warmup * 1000, () => {})
  const samples = []
  const after = await churn(seconds * 1000, (sample) => samples.push(sample))
  child.send({ type: 'exit' })
  await new Promise(resolve => child.once('exit', resolve))

  const peak = samples.reduce((max, sample) => Math.max(max, sample.rssMiB), after.rssMiB)
  const summary = {
    seconds,
    warmup,
    clients,
    connects: stats.connects,
    refused: stats.refused,
    framesReceived: stats.frames,
    writes: after.writes,
    baseline: { rssMiB: +baseline.rssMiB.toFixed(1), heapMiB: +baseline.heapMiB.toFixed(1) },
    peakRssMiB: +peak.toFixed(1),
    during: samples.map(sample => ({ rssMiB: +sample.rssMiB.toFixed(1), heapMiB: +sample.heapMiB.toFixed(1), sockets: sample.sockets })),
    after: { rssMiB: +after.rssMiB.toFixed(1), heapMiB: +after.heapMiB.toFixed(1), sockets: after.sockets },
    rssBackToBaseline: after.rssMiB <= baseline.rssMiB * RSS_TOLERANCE,
    heapBackToBaseline: after.heapMiB <= baseline.heapMiB * HEAP_TOLERANCE
  }
  console.log(JSON.stringify(summary))
  process.exitCode = summary.rssBackToBaseline && summary.heapBackToBaseline && after.sockets === 0 ? 0 : 1
}

if (process.argv.includes('--server')) await server()
else await load()
