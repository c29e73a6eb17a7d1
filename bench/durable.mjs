// The Durable Streams server of fastify-streams (`durable_streams: true` on memory, SQLite and Redis) next to the
// reference server `@durable-streams/server` (in memory), side by side in one run (issue 12). Needs `npm run build`.
//
//   node bench/durable.mjs [--scenarios appends,fanout,catchup] [--systems memory,reference,fastify-ws,sqlite,redis,floor,fastify]
//        [--messages N] [--connections N] [--readers N] [--rate N] [--seconds S] [--mb N] [--runs N] [--out FILE]
//
// appends  (a) 100-byte JSON messages: (i) --messages appends batched by `IdempotentProducer` (@durable-streams/client,
//          default linger and batch size), (ii) single-message POSTs from --connections keep-alive connections for
//          --seconds, written and read by hand on raw sockets (Node's http client would make this runner the limit).
//          Measured: appends/s and server CPU µs per append. (i') the batches of (i) from such a raw client:
//          IdempotentProducer's JSON encoding keeps this runner's core busy at a rate every server here keeps up
//          with, so (i) measures the client; (i') measures the servers. The system `floor`, in (i') and (ii) only,
//          is a bare node:http server that reads each body and answers 204 with an offset: what a request costs
//          before any work; the system `fastify` the same on a bare Fastify route (the body read as bytes by a
//          content-type parser, as the plugin's routes read it): what a request costs in Fastify before any work;
//          the system `fastify-ws` that route with @fastify/websocket registered, as every app with the plugin has
//          it (its hooks run on every route): the most any append served by the plugin's app could reach.
// fanout   (b) --readers raw SSE readers of one stream, --rate appends/s for --seconds. Each message carries its
//          scheduled append time; latency = receipt − that time. Measured: server CPU µs per delivered message,
//          p50/p99/max latency, share delivered.
// catchup  (c) a stream of --mb MB (100-byte messages appended in 1 MB batches) read from the start by plain GETs
//          following Stream-Next-Offset. Measured: MB/s and server RSS: before the read (after a GC) and its peak
//          during the read (VmHWM after resetting it; else 10 ms samples); the same for a stream twice the size,
//          so that bounded growth shows apart from growth proportional to the stream.
// Each server runs in a child pinned to CPU 0 (with redis-server); this runner pins itself to CPU 1. Server CPU is
// utime+stime from /proc/<pid>/stat, RSS from /proc/<pid>/status. Defaults are the sizes; the machine may be
// shared, so pass smaller ones for a check. Writes the report to --out (default bench/results/durable-<time>.md)
// and the raw figures beside it (.json). `--report FILE.json` writes the report of such figures again (FILE.md).
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { nowNs, procCpuMs, procRssKb, startControl, ticker, watchParent, control } from './lib/common.mjs'
import { CLK_TCK, HAS_TASKSET, ensureFileLimit, pinSelf, pinned, startNode, startRedis, stopChild } from './lib/procs.mjs'

const BENCH = path.dirname(fileURLToPath(import.meta.url))
const ROOT = path.dirname(BENCH)
const SELF = fileURLToPath(import.meta.url)

const { values: args } = parseArgs({
  options: {
    scenarios: { type: 'string', default: 'appends,fanout,catchup' },
    // Memory, the reference and the ceiling of a Fastify app back to back: the machine's speed drifts.
    systems: { type: 'string', default: 'memory,reference,fastify-ws,sqlite,redis,floor,fastify' },
    // 500 000: a shorter run (100 000 take half a second) measured start-up more than appends.
    messages: { type: 'string', default: '500000' },
    connections: { type: 'string', default: '32' },
    readers: { type: 'string', default: '1000' },
    rate: { type: 'string', default: '100' },
    seconds: { type: 'string', default: '10' },
    mb: { type: 'string', default: '100' },
    runs: { type: 'string', default: '1' },
    out: { type: 'string' },
    server: { type: 'string' },
    report: { type: 'string' }
  }
})

const STREAM_PATH = '/v1/stream/bench'
const JSON_TYPE = 'application/json'
const MESSAGE_BYTES = 100

/** A 100-byte JSON message; `ts` (scheduled time, monotonic ns) comes first so readers find it cheaply. */
function message (seq, ts = 0) {
  const head = `{"ts":${ts},"seq":${seq},"pad":"`
  return head + 'x'.repeat(Math.max(0, MESSAGE_BYTES - head.length - 2)) + '"}'
}

// ---- the server (child process, pinned to CPU 0) ----

function noop () {}

async function serve ({ system, sqlitePath, redisUrl }) {
  let port
  if (system === 'floor') {
    // The floor of single-message POSTs on node:http: read the body, answer 204 with an offset; no store, no
    // checks. What any server on node:http pays per request before doing its own work.
    let appended = 0
    const server = http.createServer((req, res) => {
      req.on('data', noop)
      req.on('end', () => {
        appended++
        res.writeHead(req.method === 'PUT' ? 201 : 204, { 'stream-next-offset': String(appended).padStart(16, '0') })
        res.end()
      })
    })
    await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
    port = server.address().port
  } else if (system === 'fastify' || system === 'fastify-ws') {
    // The same on a Fastify route: Fastify's routing, hooks and body reading, no store, no checks.
    const { default: Fastify } = await import('fastify')
    const app = Fastify({ logger: false })
    if (system === 'fastify-ws') await app.register((await import('@fastify/websocket')).default)
    app.removeAllContentTypeParsers()
    app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => done(null, body))
    let appended = 0
    app.route({
      method: ['PUT', 'POST'],
      url: '/v1/stream/*',
      handler: async (request, reply) => {
        appended++
        reply.header('stream-next-offset', String(appended).padStart(16, '0'))
        reply.code(request.method === 'PUT' ? 201 : 204).send()
      }
    })
    await app.listen({ port: 0, host: '127.0.0.1' })
    port = app.server.address().port
  } else if (system === 'reference') {
    const { DurableStreamTestServer } = await import('@durable-streams/server')
    // Responses are not compressed by fastify-streams: the reference does not compress either (the runner's
    // requests do not ask for it anyway).
    const server = new DurableStreamTestServer({ port: 0, host: '127.0.0.1', compression: false })
    await server.start()
    port = Number(new URL(server.url).port)
  } else {
    const { default: Fastify } = await import('fastify')
    const { default: streams } = await import(new URL('../dist/index.js', import.meta.url).href)
    const adapter = system === 'redis'
      ? { class: 'modules::streams::adapters::RedisAdapter', config: { redis_url: redisUrl } }
      : { class: 'modules::streams::adapters::KvStore', config: system === 'sqlite' ? { store_method: 'file_based', file_path: sqlitePath } : { store_method: 'in_memory' } }
    const app = Fastify({ logger: false })
    await app.register(streams, { adapter, durable_streams: { max_live_readers: 1_000_000 } })
    await app.listen({ port: 0, host: '127.0.0.1' })
    port = app.server.address().port
  }
  const controlServer = await startControl({}, { system })
  process.stdout.write(`READY ${JSON.stringify({ port, control: controlServer.address().port, pid: process.pid })}\n`)
  watchParent()
}

// ---- HTTP from the runner ----

const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 256 })

/** One request; resolves with { status, headers, bytes, text? } (text only when `keep` is set). */
function request (port, method, urlPath, { body = null, headers = {}, keep = false, agent = keepAlive } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: urlPath, agent, headers: body === null ? headers : { 'content-type': JSON_TYPE, 'content-length': Buffer.byteLength(body), ...headers } }, (res) => {
      let bytes = 0
      const chunks = []
      res.on('data', (chunk) => {
        bytes += chunk.length
        if (keep) chunks.push(chunk)
      })
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, bytes, text: keep ? Buffer.concat(chunks).toString('utf8') : undefined }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(body ?? undefined)
  })
}

async function createStream (port) {
  const res = await request(port, 'PUT', STREAM_PATH, { headers: { 'content-type': JSON_TYPE } })
  if (res.status !== 201 && res.status !== 200) throw new Error(`PUT ${STREAM_PATH}: ${res.status}`)
}

async function append (port, body) {
  const res = await request(port, 'POST', STREAM_PATH, { body })
  if (res.status !== 204 && res.status !== 200) throw new Error(`POST ${STREAM_PATH}: ${res.status}`)
  return res
}

/**
 * Reads the stream from the start by catch-up GETs; answers bytes read, messages counted (`countMessages`) and
 * the number of requests.
 */
async function readAll (port, { countMessages = false } = {}) {
  let offset = '-1'
  let bytes = 0
  let messages = 0
  let requests = 0
  for (;;) {
    const res = await request(port, 'GET', `${STREAM_PATH}?offset=${encodeURIComponent(offset)}`, { keep: countMessages })
    requests++
    if (res.status !== 200) throw new Error(`GET ${STREAM_PATH}: ${res.status}`)
    bytes += res.bytes
    if (countMessages) for (let at = res.text.indexOf('"seq":'); at >= 0; at = res.text.indexOf('"seq":', at + 6)) messages++
    const next = res.headers['stream-next-offset']
    if (res.headers['stream-up-to-date'] === 'true' || next === undefined || next === offset) break
    offset = next
  }
  return { bytes, messages, requests }
}

// ---- measuring ----

const cpuMs = (pid) => procCpuMs(pid, CLK_TCK)

/** Server CPU (and redis-server's, when there is one) from now until `end()`. */
function cpuMeter (server, redis) {
  const start = { server: cpuMs(server.pid), redis: redis ? cpuMs(redis.pid) : 0, runner: process.cpuUsage(), at: performance.now() }
  return () => {
    const runner = process.cpuUsage(start.runner)
    const wallMs = performance.now() - start.at
    return {
      wallMs,
      serverCpuMs: cpuMs(server.pid) - start.server,
      redisCpuMs: redis ? cpuMs(redis.pid) - start.redis : null,
      runnerCpuPct: Math.round((runner.user + runner.system) / 10 / wallMs)
    }
  }
}

function percentile (sorted, p) {
  if (sorted.length === 0) return null
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]
}

const round = (x, digits = 2) => x == null || !Number.isFinite(x) ? null : Math.round(x * 10 ** digits) / 10 ** digits

// ---- (a) appends ----

async function appendsProducer (server, redis, count) {
  const { DurableStream, IdempotentProducer } = await import('@durable-streams/client')
  await createStream(server.port)
  const stream = new DurableStream({ url: `http://127.0.0.1:${server.port}${STREAM_PATH}`, contentType: JSON_TYPE })
  let errors = 0
  let firstError = null
  // Batches in flight can reach the server out of order; it answers 409 and the producer resends: counted.
  const statuses = {}
  const countingFetch = async (...request) => {
    const response = await fetch(...request)
    statuses[response.status] = (statuses[response.status] ?? 0) + 1
    return response
  }
  const producer = new IdempotentProducer(stream, 'bench-producer', {
    fetch: countingFetch,
    onError: (err) => {
      errors++
      firstError ??= String(err?.message ?? err)
    }
  })
  const end = cpuMeter(server, redis)
  // Appends come in slices, so batches go out while later messages are still being produced.
  for (let i = 0; i < count;) {
    for (const stop = Math.min(count, i + 1000); i < stop; i++) producer.append(message(i))
    await new Promise(resolve => setImmediate(resolve))
  }
  await producer.flush()
  const cost = end()
  await producer.detach()
  const check = await readAll(server.port, { countMessages: true })
  if (check.messages !== count) throw new Error(`producer: the stream holds ${check.messages} messages, ${count} appended (${errors} errors: ${firstError})`)
  return { ...summariseAppends(cost, count, errors, firstError), batches: Object.values(statuses).reduce((a, b) => a + b, 0), statuses }
}

/**
 * One keep-alive connection that POSTs one request at a time, each after the previous response: request bytes
 * written by hand and responses read by their head and Content-Length. Node's http client costs about as much
 * per request as the servers measured here, so with it the runner's core, not the server, set the rate.
 * `next()` gives each request's extra header lines and body, and the messages it carries. Resolves with the
 * messages answered 2xx and the errors once `deadline` (performance.now()) has passed.
 */
function postLoop (port, deadline, next) {
  return new Promise((resolve) => {
    const tally = { done: 0, errors: 0, firstError: null }
    const socket = net.connect(port, '127.0.0.1')
    socket.setNoDelay(true)
    let buffer = Buffer.alloc(0)
    let carried = 0
    const send = () => {
      if (performance.now() >= deadline) return socket.end()
      const { headers, body, messages } = next()
      carried = messages
      socket.write(`POST ${STREAM_PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: ${JSON_TYPE}\r\n${headers}content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`)
    }
    const fail = (message) => {
      tally.errors++
      tally.firstError ??= message
      socket.destroy()
    }
    socket.on('data', (chunk) => {
      buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk])
      for (;;) {
        const headEnd = buffer.indexOf('\r\n\r\n')
        if (headEnd < 0) return
        const head = buffer.toString('latin1', 0, headEnd)
        const length = /\r\ncontent-length: *(\d+)/i.exec(head)
        const total = length === null && /\r\ntransfer-encoding: *chunked/i.test(head)
          ? chunkedEnd(buffer, headEnd + 4)
          : headEnd + 4 + (length === null ? 0 : Number(length[1]))
        if (total < 0 || buffer.length < total) return
        const status = Number(head.slice(9, 12))
        buffer = buffer.subarray(total)
        if (status === 200 || status === 204) tally.done += carried
        else return fail(`status ${status}`)
        send()
      }
    })
    socket.on('connect', send)
    socket.on('error', (err) => fail(err.message))
    socket.on('close', () => resolve(tally))
  })
}

/** Where the chunked body starting at `start` ends (after its last chunk), or -1 when it has not all arrived. */
function chunkedEnd (buffer, start) {
  let at = start
  for (;;) {
    const line = buffer.indexOf('\r\n', at)
    if (line < 0) return -1
    const size = parseInt(buffer.toString('latin1', at, line), 16)
    at = line + 2 + size + 2
    if (at > buffer.length) return -1
    if (size === 0) return at
  }
}

/** `connections` postLoops for `seconds`; `next(connection)` as in postLoop. */
async function postFrom (server, redis, connections, seconds, next) {
  await createStream(server.port)
  const end = cpuMeter(server, redis)
  const deadline = performance.now() + seconds * 1000
  const tallies = await Promise.all(Array.from({ length: connections }, (_, connection) => postLoop(server.port, deadline, () => next(connection))))
  const cost = end()
  const done = tallies.reduce((sum, t) => sum + t.done, 0)
  const errors = tallies.reduce((sum, t) => sum + t.errors, 0)
  return summariseAppends(cost, done, errors, tallies.find(t => t.firstError)?.firstError ?? null)
}

function appendsPosts (server, redis, connections, seconds) {
  let sent = 0
  return postFrom(server, redis, connections, seconds, () => ({ headers: '', body: message(sent++), messages: 1 }))
}

const BATCH_MESSAGES = 1000
const BATCH_PRODUCERS = 4

/**
 * What IdempotentProducer sends, from a runner that is not the limit: BATCH_PRODUCERS producers, one connection
 * each, posting JSON arrays of BATCH_MESSAGES messages with Producer-Id/Epoch/Seq, one batch at a time.
 */
function appendsBatches (server, redis, seconds) {
  const body = `[${Array.from({ length: BATCH_MESSAGES }, (_, i) => message(i)).join(',')}]`
  const seqs = new Array(BATCH_PRODUCERS).fill(0)
  return postFrom(server, redis, BATCH_PRODUCERS, seconds, (producer) => ({
    headers: `producer-id: bench-${producer}\r\nproducer-epoch: 0\r\nproducer-seq: ${seqs[producer]++}\r\n`,
    body,
    messages: BATCH_MESSAGES
  }))
}

function summariseAppends (cost, appends, errors, firstError) {
  return {
    appends,
    appendsPerSec: Math.round(appends / (cost.wallMs / 1000)),
    serverCpuUsPerAppend: round((cost.serverCpuMs * 1000) / appends),
    redisCpuUsPerAppend: cost.redisCpuMs == null ? null : round((cost.redisCpuMs * 1000) / appends),
    serverCpuPct: Math.round((100 * cost.serverCpuMs) / cost.wallMs),
    runnerCpuPct: cost.runnerCpuPct,
    errors,
    firstError
  }
}

// ---- (b) live fan-out ----

const sseAgent = new http.Agent({ keepAlive: false, maxSockets: Infinity })

/**
 * A raw SSE reader: splits events, records the latency of every message it gets (from its `ts`), keeps the last
 * offset and reconnects from it when the server ends the response (the protocol's ~60 s rotation).
 */
function sseReader (port, offset, sink) {
  const reader = { offset, received: 0, ready: false, closed: false, reconnects: 0, errors: 0 }
  const connect = () => {
    if (reader.closed) return
    const req = http.get({ host: '127.0.0.1', port, path: `${STREAM_PATH}?offset=${encodeURIComponent(reader.offset)}&live=sse`, agent: sseAgent }, (res) => {
      if (res.statusCode !== 200) {
        reader.errors++
        res.resume()
        return setTimeout(connect, 100)
      }
      res.setEncoding('utf8')
      let buffer = ''
      res.on('data', (chunk) => {
        const at = nowNs()
        buffer += chunk
        let end
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const event = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          if (event.startsWith('event: data')) {
            for (let i = event.indexOf('"ts":'); i >= 0; i = event.indexOf('"ts":', i + 5)) {
              const ts = Number(event.slice(i + 5, event.indexOf(',', i)))
              reader.received++
              sink(at - ts, reader)
            }
          } else if (event.startsWith('event: control')) {
            const match = /"streamNextOffset":"([^"]+)"/.exec(event)
            if (match) reader.offset = match[1]
            reader.ready = true
          }
        }
      })
      res.on('close', () => {
        if (reader.closed) return
        reader.reconnects++
        setTimeout(connect, 20)
      })
    })
    req.on('error', () => {
      reader.errors++
      if (!reader.closed) setTimeout(connect, 100)
    })
    reader.request = req
  }
  reader.close = () => {
    reader.closed = true
    reader.request?.destroy()
  }
  connect()
  return reader
}

async function until (check, ms) {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) return false
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  return true
}

async function fanout (server, redis, { readers: count, rate, seconds }) {
  await createStream(server.port)
  const head = await request(server.port, 'HEAD', STREAM_PATH)
  const tail = head.headers['stream-next-offset']
  if (!tail) throw new Error('HEAD gave no Stream-Next-Offset')
  const total = Math.round(rate * seconds)
  // Every delivery inside the measured window, in µs.
  const latencies = new Float64Array(total * count)
  let recorded = 0
  const sink = (ns) => { if (recorded < latencies.length) latencies[recorded++] = ns / 1000 }
  const readers = []
  for (let i = 0; i < count; i++) {
    readers.push(sseReader(server.port, tail, sink))
    if (i % 100 === 99) await new Promise(resolve => setTimeout(resolve, 20))
  }
  if (!(await until(() => readers.every(r => r.ready), 60_000))) throw new Error(`fan-out: ${readers.filter(r => !r.ready).length} readers not connected after 60 s`)
  await new Promise(resolve => setTimeout(resolve, 1000))
  const appender = new http.Agent({ keepAlive: true, maxSockets: 16 })
  let appendErrors = 0
  let firstError = null
  const pending = []
  const end = cpuMeter(server, redis)
  await ticker({
    rate,
    durationMs: seconds * 1000,
    startNs: nowNs() + 20e6,
    onTick: (seq, ts) => {
      pending.push(request(server.port, 'POST', STREAM_PATH, { body: message(seq, ts), agent: appender }).then((res) => {
        if (res.status !== 204 && res.status !== 200) throw new Error(`status ${res.status}`)
      }).catch((err) => {
        appendErrors++
        firstError ??= String(err?.message ?? err)
      }))
    }
  })
  await Promise.all(pending)
  // Drain: until every reader has the last message, at most 10 s.
  // Every message, counted: appends go out on 16 connections, so the last one stored need not be the last sent.
  const drained = await until(() => readers.every(r => r.received >= total), 10_000)
  const cost = end()
  for (const reader of readers) reader.close()
  appender.destroy()
  const delivered = readers.reduce((sum, r) => sum + r.received, 0)
  const sorted = latencies.subarray(0, recorded).sort()
  return {
    readers: count,
    rate,
    seconds,
    appends: total,
    appendErrors,
    firstError,
    delivered,
    deliveredPct: round((100 * delivered) / (total * count), 1),
    drained,
    reconnects: readers.reduce((sum, r) => sum + r.reconnects, 0),
    serverCpuUsPerDelivery: round((cost.serverCpuMs * 1000) / delivered, 3),
    redisCpuUsPerDelivery: cost.redisCpuMs == null ? null : round((cost.redisCpuMs * 1000) / delivered, 3),
    serverCpuPct: Math.round((100 * cost.serverCpuMs) / cost.wallMs),
    runnerCpuPct: cost.runnerCpuPct,
    latencyMs: { p50: round(percentile(sorted, 50) / 1000), p99: round(percentile(sorted, 99) / 1000), max: round(sorted[sorted.length - 1] / 1000) }
  }
}

// ---- (c) catch-up read ----

/** Resets the kernel's peak-RSS mark (VmHWM) of `pid`; false when this kernel or the permissions do not allow it. */
function resetPeakRss (pid) {
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5')
    return true
  } catch {
    return false
  }
}

function peakRssKb (pid) {
  return Number(/VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1])
}

async function catchup (server, redis, { mb }) {
  await createStream(server.port)
  const perBatch = Math.floor((1024 * 1024) / (MESSAGE_BYTES + 1))
  const batch = '[' + Array.from({ length: perBatch }, (_, i) => message(i)).join(',') + ']'
  const batches = Math.ceil((mb * 1024 * 1024) / Buffer.byteLength(batch))
  const fillStarted = performance.now()
  for (let i = 0; i < batches; i++) await append(server.port, batch)
  const fillMs = performance.now() - fillStarted
  await control(server.control, 'gc')
  await new Promise(resolve => setTimeout(resolve, 200))
  const rssBeforeKb = procRssKb(server.pid)
  const hwmReset = resetPeakRss(server.pid)
  let sampledPeakKb = rssBeforeKb
  const sampler = setInterval(() => { sampledPeakKb = Math.max(sampledPeakKb, procRssKb(server.pid)) }, 10)
  const end = cpuMeter(server, redis)
  const read = await readAll(server.port)
  const cost = end()
  clearInterval(sampler)
  sampledPeakKb = Math.max(sampledPeakKb, procRssKb(server.pid))
  const peakKb = hwmReset ? Math.max(peakRssKb(server.pid), sampledPeakKb) : sampledPeakKb
  const streamBytes = batches * Buffer.byteLength(batch)
  if (read.bytes < streamBytes * 0.99) throw new Error(`catch-up: read ${read.bytes} bytes of a ${streamBytes}-byte stream`)
  return {
    streamMb: round(streamBytes / 2 ** 20, 1),
    fillMbPerSec: round(streamBytes / 2 ** 20 / (fillMs / 1000), 1),
    readMb: round(read.bytes / 2 ** 20, 1),
    requests: read.requests,
    mbPerSec: round(read.bytes / 2 ** 20 / (cost.wallMs / 1000), 1),
    serverCpuMsPerMb: round(cost.serverCpuMs / (read.bytes / 2 ** 20)),
    rssBeforeMb: round(rssBeforeKb / 1024, 1),
    rssPeakMb: round(peakKb / 1024, 1),
    rssGrowthMb: round((peakKb - rssBeforeKb) / 1024, 1),
    peakFrom: hwmReset ? 'VmHWM' : '10 ms samples',
    runnerCpuPct: cost.runnerCpuPct
  }
}

// ---- the runner ----

const LABELS = {
  memory: 'ours, memory',
  sqlite: 'ours, SQLite',
  redis: 'ours, Redis',
  reference: 'reference (@durable-streams/server, memory)',
  floor: 'floor: bare node:http answering 204, no store',
  fastify: 'floor: bare Fastify route answering 204, no store',
  'fastify-ws': 'floor: the same Fastify route, @fastify/websocket registered'
}
// The scenarios each system can serve (default: all).
const FLOOR_SCENARIOS = ['appends-posts', 'appends-batches']
const SYSTEM_SCENARIOS = { floor: FLOOR_SCENARIOS, fastify: FLOOR_SCENARIOS, 'fastify-ws': FLOOR_SCENARIOS }
const SCENARIOS = {
  'appends-producer': (server, redis, sizes) => appendsProducer(server, redis, sizes.messages),
  'appends-posts': (server, redis, sizes) => appendsPosts(server, redis, sizes.connections, sizes.seconds),
  'appends-batches': (server, redis, sizes) => appendsBatches(server, redis, sizes.seconds),
  fanout,
  catchup,
  // The same read of a stream twice the size: RSS growth that is bounded stays about the same, growth
  // proportional to the stream doubles.
  'catchup-double': (server, redis, sizes) => catchup(server, redis, { mb: sizes.mb * 2 })
}

function pkgVersion (name) {
  try {
    return JSON.parse(fs.readFileSync(path.join(ROOT, 'node_modules', name, 'package.json'), 'utf8')).version
  } catch {
    return 'n/a'
  }
}

async function withServer (system, redis, work) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'durable-bench-'))
  if (redis) spawnSync('redis-cli', ['-p', String(redis.port), 'flushall'])
  const server = await startNode([SELF, '--server', JSON.stringify({ system, sqlitePath: path.join(dir, 'streams.db'), redisUrl: redis?.url })], { cpu: 0, nodeArgs: ['--expose-gc'] })
  try {
    return await work(server)
  } finally {
    await stopChild(server.child)
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

const median = (xs) => {
  const values = xs.filter(x => x != null && Number.isFinite(x)).sort((a, b) => a - b)
  return values.length === 0 ? null : values[Math.floor(values.length / 2)]
}

/** Runner CPU % from which a scenario measures the runner, not the servers. */
const CLIENT_BOUND_PCT = 90

function report (raw) {
  const { meta, results } = raw
  const systems = meta.systems
  const get = (scenario, system, key) => median((results[scenario]?.[system] ?? []).map(r => key.split('.').reduce((o, k) => o?.[k], r)))
  // Always ours ÷ reference: above 1 is better for rates, below 1 is better for CPU.
  const ratio = (scenario, system, key) => {
    const a = get(scenario, system, key)
    const b = get(scenario, 'reference', key)
    if (a == null || b == null || system === 'reference' || a === 0 || b === 0) return '–'
    return `${(a / b).toFixed(2)}×`
  }
  const cell = (x) => x == null ? '–' : typeof x === 'number' ? x.toLocaleString('en-US') : String(x)
  const lines = [
    '# Durable Streams: fastify-streams vs the reference server (issue 12)',
    '',
    `Made by \`${meta.command}\` on ${meta.date} (${meta.cpu}, ${meta.cores} cores, Node ${meta.node}, ${meta.redis}; ` +
      `@durable-streams/server ${meta.versions.server}, @durable-streams/client ${meta.versions.client}; taskset: ${meta.taskset ? 'server and redis-server on CPU 0, this runner on CPU 1' : 'not available, runs not pinned'}).`,
    `${meta.runs} run(s), systems interleaved, a fresh server per measurement; cells are medians. Server CPU = utime+stime of the server process ` +
      '(`/proc/<pid>/stat`); for Redis the redis-server CPU is given apart. Every ratio is ours ÷ reference: above 1 is better for rates, below 1 for CPU.',
    ...meta.memory
      ? [`Memory on the servers' core: copying into new 100 KB blocks that are kept costs ${meta.memory.keepMsPerMb} ms of CPU per MB, into one reused block ${meta.memory.reuseMsPerMb} ms ` +
        `(${PROBE_MB} MB each). A server keeping appends in memory pays the first for every MB it keeps: ${round(meta.memory.keepMsPerMb / 10, 2)} µs per 100-byte message, whichever server it is.`]
      : [],
    ''
  ]
  if (meta.notes.length) lines.push(...meta.notes.map(n => `- ${n}`), '')
  const table = (scenario, heading, columns) => {
    if (!results[scenario]) return
    lines.push(`## ${heading}`, '', `| system | ${columns.map(c => c.name).join(' | ')} |`, `|---|${columns.map(() => '---').join('|')}|`)
    for (const system of systems) {
      if (!results[scenario][system]) continue
      const errors = results[scenario][system].filter(r => r.error)
      if (errors.length) lines.push(`| ${LABELS[system]} | error: ${errors[0].error.split('\n')[0].slice(0, 200)} |`)
      else lines.push(`| ${LABELS[system]} | ${columns.map(c => c.value(system)).join(' | ')} |`)
    }
    lines.push('')
  }
  const appendColumns = (scenario) => [
    { name: 'appends/s', value: s => cell(get(scenario, s, 'appendsPerSec')) },
    { name: 'vs reference', value: s => ratio(scenario, s, 'appendsPerSec') },
    { name: 'server CPU µs/append', value: s => cell(get(scenario, s, 'serverCpuUsPerAppend')) },
    { name: 'vs reference', value: s => ratio(scenario, s, 'serverCpuUsPerAppend') },
    { name: 'redis-server µs/append', value: s => cell(get(scenario, s, 'redisCpuUsPerAppend')) },
    { name: 'runner CPU %', value: s => cell(get(scenario, s, 'runnerCpuPct')) },
    { name: 'errors', value: s => cell(get(scenario, s, 'errors')) },
    ...scenario === 'appends-producer' ? [{ name: 'batch requests (of which 409, resent)', value: s => `${cell(get(scenario, s, 'batches'))} (${cell(get(scenario, s, 'statuses.409') ?? 0)})` }] : []
  ]
  table('appends-producer', `a(i) Appends of 100-byte JSON messages batched by IdempotentProducer (${meta.sizes.messages.toLocaleString('en-US')} messages)`, appendColumns('appends-producer'))
  table('appends-batches', `a(i') The same batches from a raw client: ${BATCH_PRODUCERS} producers, ${BATCH_MESSAGES.toLocaleString('en-US')} messages per POST, ${meta.sizes.seconds} s`, appendColumns('appends-batches'))
  table('appends-posts', `a(ii) Single-message POSTs, ${meta.sizes.connections} keep-alive connections, ${meta.sizes.seconds} s`, appendColumns('appends-posts'))
  table('fanout', `b Live fan-out: ${meta.sizes.readers.toLocaleString('en-US')} SSE readers × ${meta.sizes.rate} appends/s for ${meta.sizes.seconds} s`, [
    { name: 'delivered %', value: s => cell(get('fanout', s, 'deliveredPct')) },
    { name: 'server CPU µs/delivery', value: s => cell(get('fanout', s, 'serverCpuUsPerDelivery')) },
    { name: 'vs reference', value: s => ratio('fanout', s, 'serverCpuUsPerDelivery') },
    { name: 'redis-server µs/delivery', value: s => cell(get('fanout', s, 'redisCpuUsPerDelivery')) },
    { name: 'server CPU %', value: s => cell(get('fanout', s, 'serverCpuPct')) },
    { name: 'latency p50 / p99 / max (ms)', value: s => `${cell(get('fanout', s, 'latencyMs.p50'))} / ${cell(get('fanout', s, 'latencyMs.p99'))} / ${cell(get('fanout', s, 'latencyMs.max'))}` },
    { name: 'runner CPU %', value: s => cell(get('fanout', s, 'runnerCpuPct')) }
  ])
  table('catchup', `c Catch-up read of a ${meta.sizes.mb} MB stream (100-byte JSON messages, appended in 1 MB batches)`, [
    { name: 'read MB/s', value: s => cell(get('catchup', s, 'mbPerSec')) },
    { name: 'vs reference', value: s => ratio('catchup', s, 'mbPerSec') },
    { name: 'GETs', value: s => cell(get('catchup', s, 'requests')) },
    { name: 'server CPU ms/MB', value: s => cell(get('catchup', s, 'serverCpuMsPerMb')) },
    { name: 'RSS before → peak (MB)', value: s => `${cell(get('catchup', s, 'rssBeforeMb'))} → ${cell(get('catchup', s, 'rssPeakMb'))}` },
    { name: 'RSS growth during the read (MB)', value: s => cell(get('catchup', s, 'rssGrowthMb')) },
    { name: `same, reading a ${meta.sizes.mb * 2} MB stream`, value: s => cell(get('catchup-double', s, 'rssGrowthMb')) },
    { name: 'fill MB/s', value: s => cell(get('catchup', s, 'fillMbPerSec')) }
  ])
  // Ours ÷ reference run by run: each pair runs back to back while the machine's speed drifts, so the targets
  // are decided on the median of these; the ratio of the medians (the tables') is shown beside it.
  const pairedRatio = (scenario, key) => {
    const ours = results[scenario]?.memory ?? []
    const reference = results[scenario]?.reference ?? []
    const ratios = ours.map((r, i) => r[key] && reference[i]?.[key] ? r[key] / reference[i][key] : null)
    const value = median(ratios)
    if (value == null) return { value, text: null }
    if (ratios.length < 2) return { value, text: `${value.toFixed(2)}×` }
    const runs = ratios.map(x => x == null ? '–' : `${x.toFixed(2)}×`).join(', ')
    return { value, text: `${value.toFixed(2)}× (runs: ${runs}; ratio of the medians ${ratio(scenario, 'memory', key)})` }
  }
  // `met`: true, false, or a string saying why the figure cannot decide.
  const target = (name, bar, value, met) => lines.push(`| ${name} | ${bar} | ${value ?? '–'} | ${value == null ? '–' : typeof met === 'string' ? met : met ? 'met' : '**missed**'} |`)
  lines.push('## Targets of issue 12 (memory adapter vs the reference)', '', '| target | bar | measured | |', '|---|---|---|---|')
  for (const [scenario, what] of [['appends-producer', 'batched by IdempotentProducer'], ['appends-batches', `batched, from a raw client (${BATCH_MESSAGES} per POST, the runner not the limit)`], ['appends-posts', 'single-message POSTs']]) {
    const paired = pairedRatio(scenario, 'appendsPerSec')
    // A runner whose core is full sets both rates: the servers' CPU per append is then what compares them.
    const runner = Math.min(get(scenario, 'memory', 'runnerCpuPct') ?? 0, get(scenario, 'reference', 'runnerCpuPct') ?? 0)
    const cpu = get(scenario, 'memory', 'serverCpuUsPerAppend')
    const referenceCpu = get(scenario, 'reference', 'serverCpuUsPerAppend')
    const clientBound = runner >= CLIENT_BOUND_PCT && cpu && referenceCpu
      ? `undecided: the client's rate, not the servers' (the runner's core at ${runner} % or more for both); server CPU per append ${(cpu / referenceCpu).toFixed(2)}× the reference's`
      : null
    target(`appends/s, ${what}`, '≥ 1.5× the reference', paired.text, clientBound ?? paired.value >= 1.5)
  }
  const fanout = pairedRatio('fanout', 'serverCpuUsPerDelivery')
  target('fan-out server CPU per delivery', '≤ 0.7× the reference', fanout.text, fanout.value <= 0.7)
  for (const system of systems.filter(s => s !== 'reference' && results.catchup?.[s])) {
    const growth = get('catchup', system, 'rssGrowthMb')
    const size = get('catchup', system, 'streamMb')
    const doubleGrowth = get('catchup-double', system, 'rssGrowthMb')
    const doubleSize = get('catchup-double', system, 'streamMb')
    // Growth proportional to the stream grows by about what the bigger stream adds (the reference: by 5×
    // that); bounded growth moves only by the garbage collector's timing, tens of MB from run to run.
    const bounded = growth != null && doubleGrowth != null && doubleSize != null && doubleGrowth - growth < (doubleSize - size) / 2
    const runs = (scenario) => (results[scenario]?.[system] ?? []).map(r => r.rssGrowthMb ?? '–').join(', ')
    target(`catch-up RSS growth, ${LABELS[system]}`, 'bounded: not proportional to the stream (reading twice the stream adds less than half the added size)',
      growth != null && `${growth} MB reading ${size} MB, ${doubleGrowth ?? '–'} MB reading ${doubleSize ?? '–'} MB (runs: ${runs('catchup')}; ${runs('catchup-double')})`, bounded)
  }
  // What the single-POST bar leaves an append, measured against the emptiest route the plugin's app can serve.
  const ceiling = get('appends-posts', 'fastify-ws', 'appendsPerSec')
  const referencePosts = get('appends-posts', 'reference', 'appendsPerSec')
  const floorCpu = get('appends-posts', 'fastify-ws', 'serverCpuUsPerAppend')
  const referenceCpu = get('appends-posts', 'reference', 'serverCpuUsPerAppend')
  const oursCpu = get('appends-posts', 'memory', 'serverCpuUsPerAppend')
  if (ceiling && referencePosts && floorCpu && referenceCpu) {
    lines.push('', 'Single-message POSTs: a Fastify route doing no work, in an app with @fastify/websocket (as every app with the plugin), ' +
      `reaches ${(ceiling / referencePosts).toFixed(2)}× the reference at ${floorCpu} µs of server CPU per request. ` +
      `The 1.5× bar (${round(referenceCpu / 1.5, 1)} µs per request) ` +
      (referenceCpu / 1.5 > floorCpu ? `leaves ${round(referenceCpu / 1.5 - floorCpu, 1)} µs for the append itself` : `is ${round(floorCpu - referenceCpu / 1.5, 1)} µs below that route`) +
      (oursCpu ? `; ours takes ${round(oursCpu - floorCpu, 1)} µs above that route.` : '.'))
  }
  lines.push('', `Raw figures: \`${path.relative(ROOT, meta.rawFile)}\`.`, '')
  return lines.join('\n')
}

async function run () {
  const sizes = {
    messages: Number(args.messages),
    connections: Number(args.connections),
    readers: Number(args.readers),
    rate: Number(args.rate),
    seconds: Number(args.seconds),
    mb: Number(args.mb)
  }
  const runs = Number(args.runs)
  const systems = args.systems.split(',')
  const scenarios = args.scenarios.split(',').flatMap(s => s === 'appends' ? ['appends-producer', 'appends-batches', 'appends-posts'] : s === 'catchup' ? ['catchup', 'catchup-double'] : [s])
  for (const s of scenarios) if (!SCENARIOS[s]) throw new Error(`unknown scenario ${s}`)
  for (const s of systems) if (!LABELS[s]) throw new Error(`unknown system ${s}`)
  if (!fs.existsSync(path.join(ROOT, 'dist', 'index.js')) && systems.some(s => s !== 'reference')) throw new Error('dist/index.js is missing: run `npm run build` first')
  const limit = ensureFileLimit(sizes.readers + 1000)
  const notes = []
  if (limit < sizes.readers + 100) notes.push(`\`ulimit -n\` is ${limit}: too low for ${sizes.readers} readers.`)
  const pinnedRunner = pinSelf(1)
  const started = new Date()
  const stamp = started.toISOString().replace(/[:.]/g, '-')
  const out = args.out ?? path.join(BENCH, 'results', `durable-${stamp}.md`)
  const meta = {
    command: `node bench/durable.mjs ${process.argv.slice(2).join(' ')}`.trim(),
    date: started.toISOString().slice(0, 16).replace('T', ' ') + ' UTC',
    cpu: os.cpus()[0]?.model,
    cores: os.cpus().length,
    node: process.version,
    redis: spawnSync('redis-server', ['--version'], { encoding: 'utf8' }).stdout?.split(' ').slice(0, 3).join(' ') || 'redis-server not found',
    versions: { server: pkgVersion('@durable-streams/server'), client: pkgVersion('@durable-streams/client') },
    taskset: HAS_TASKSET && pinnedRunner,
    runs,
    systems,
    sizes,
    notes,
    rawFile: out.replace(/\.md$/, '') + '.json',
    memory: memoryProbe()
  }
  const results = {}
  const redis = systems.includes('redis') ? await startRedis({ cpu: 0 }) : null
  const log = (text) => console.log(`[${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s] ${text}`)
  try {
    for (const scenario of scenarios) {
      for (let rep = 0; rep < runs; rep++) {
        for (const system of systems) {
          if (SYSTEM_SCENARIOS[system] && !SYSTEM_SCENARIOS[system].includes(scenario)) continue
          let result
          try {
            result = await withServer(system, system === 'redis' ? redis : null, server => SCENARIOS[scenario](server, system === 'redis' ? redis : null, sizes))
          } catch (err) {
            result = { error: String(err?.stack ?? err) }
          }
          ;(results[scenario] ??= {})[system] ??= []
          results[scenario][system].push(result)
          log(`${scenario} #${rep + 1} ${system}: ${JSON.stringify(result)}`)
        }
      }
    }
  } finally {
    await redis?.stop()
  }
  fs.mkdirSync(path.dirname(out), { recursive: true })
  fs.writeFileSync(meta.rawFile, JSON.stringify({ meta, results }, null, 1))
  const markdown = report({ meta, results })
  fs.writeFileSync(out, markdown)
  console.log('\n' + markdown)
  log(`wrote ${out} and ${meta.rawFile}`)
}

/** MB a memory probe copies (in 100 KB blocks, as a batch of 1 000 messages). */
const PROBE_MB = 200

/**
 * What memory costs on the servers' core: CPU ms per MB for copying into new blocks that are kept (what a server
 * storing appends in memory pays) and into one block used again. Where the first is far above the second (fresh
 * pages are expensive on some virtual machines), every server's appends pay it per byte kept, which pulls the
 * ratios between servers towards 1.
 */
function memoryProbe () {
  const code = `
    const block = 100_000, count = ${PROBE_MB} * 10, source = Buffer.alloc(block, 120), kept = []
    const reused = Buffer.allocUnsafe(block)
    const cpu = (work) => { const start = process.cpuUsage(); work(); const used = process.cpuUsage(start); return (used.user + used.system) / 1000 / ${PROBE_MB} }
    const reuse = cpu(() => { for (let i = 0; i < count; i++) source.copy(reused) })
    const keep = cpu(() => { for (let i = 0; i < count; i++) { const b = Buffer.allocUnsafe(block); source.copy(b); kept.push(b) } })
    console.log(JSON.stringify({ keepMsPerMb: keep, reuseMsPerMb: reuse }))`
  const command = [...pinned(0), process.execPath, '-e', code]
  const result = spawnSync(command[0], command.slice(1), { encoding: 'utf8' })
  try {
    const { keepMsPerMb, reuseMsPerMb } = JSON.parse(result.stdout)
    return { keepMsPerMb: round(keepMsPerMb, 2), reuseMsPerMb: round(reuseMsPerMb, 3) }
  } catch {
    return null
  }
}

/** Writes the report of raw figures written earlier (`--report FILE.json`) beside them, measuring nothing. */
function rewriteReport (rawFile) {
  const raw = JSON.parse(fs.readFileSync(rawFile, 'utf8'))
  const out = rawFile.replace(/\.json$/, '') + '.md'
  fs.writeFileSync(out, report(raw))
  console.log(`wrote ${out}`)
}

if (args.server !== undefined) await serve(JSON.parse(args.server))
else if (args.report !== undefined) rewriteReport(args.report)
else await run()
