// Durable streams against the reference server (@durable-streams/server): the same random sequences of creates,
// forks, appends (JSON and text, Stream-Seq, producers, closes, bad bodies; alone and pipelined in batches), reads,
// HEADs and deletes go to the reference and to fastify-streams on memory, SQLite, Redis, and two Redis nodes
// taking operations in turn. Every answer must agree: status, what a read returns, whether it is up to date or
// closed, the expiry a HEAD tells, and which earlier offset (if any) an answered offset equals. The conformance
// suite checks each rule on its own; this checks them in combination, where stores keep state. The operations
// are those the reference gets right (it fails 8 conformance tests, none about these), bar the cases named below.
// A longer run: DURABLE_DIFFERENTIAL_RUNS=3000 npx tap test/http/durable-differential.test.ts
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { connect } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import fc from 'fast-check'
import { DurableStreamTestServer } from '@durable-streams/server'
import { serve } from '../helpers/app.js'
import { startRedisServer } from '../helpers/redis-server.js'
import type { StreamsOptions } from '../../lib/index.js'

const JSON_TYPE = 'application/json'
const TEXT_TYPE = 'text/plain'
const STREAMS = 3
/**
 * How long a long-poll waits, on every server. (Long-polls from `now` are left out: the reference answers them
 * against the protocol, one of its 8 failed conformance tests.)
 */
const LONG_POLL_MS = 30

interface Create { op: 'create', stream: number, contentType: string, closed: boolean, body: string | null, expiry: Expiry }
/** Stream-TTL and Stream-Expires-At of a PUT (far off: streams do not expire during a run). */
interface Expiry { ttl: string | null, expiresAt: string | null }
interface Append {
  op: 'append'
  stream: number
  contentType: string
  body: string
  close: boolean
  streamSeq: string | null
  producer: { id: string, epoch: number, seq: number } | null
}
/** `from`: -1 (the start), 'now', or the index of an offset this stream answered before. */
/**
 * A catch-up read, a long-poll (answered at once when there is data, else after LONG_POLL_MS), or an SSE read
 * (here read until its first control event at the tail; a catch-up read on the reference, whose SSE answers
 * some catch-ups against the protocol, two of its failed conformance tests).
 */
interface Read { op: 'read', stream: number, from: -1 | 'now' | number, live: false | 'long-poll' | 'sse' }
/** A fork of `source` at the index of an offset that stream answered before (null: at its tail). */
interface Fork { op: 'fork', stream: number, source: number, at: number | null, contentType: string, expiry: Expiry }
interface Head { op: 'head', stream: number }
interface Delete { op: 'delete', stream: number }
/** Appends to one stream sent together. */
interface Batch { op: 'batch', stream: number, appends: Array<Omit<Append, 'op' | 'stream'>> }
type Operation = Create | Append | Read | Fork | Head | Delete | Batch

const streamArb = fc.integer({ min: 0, max: STREAMS - 1 })
const typeArb = fc.constantFrom(JSON_TYPE, JSON_TYPE, TEXT_TYPE)
const jsonBodyArb = fc.oneof(
  { weight: 6, arbitrary: fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 4 }).map(values => JSON.stringify(values)) },
  { weight: 3, arbitrary: fc.jsonValue({ maxDepth: 2 }).map(value => JSON.stringify(value)) },
  { weight: 1, arbitrary: fc.constantFrom('', '[', '[1,]', '{"a":', 'nope', ' [ 1 , "two" ] ', '[[]]', '[]') }
)
const textBodyArb = fc.string({ maxLength: 12, unit: fc.constantFrom('a', 'b', ' ', '\n', 'é', '\u{1F600}') })

const expiryArb = fc.record({
  ttl: fc.option(fc.constantFrom('3600', '7200', '036', '1.5'), { freq: 3 }),
  // Distinct instants: the reference compares the header's text, this server the instant (same instant, 200).
  expiresAt: fc.option(fc.constantFrom('2099-01-01T00:00:00Z', '2098-06-01T12:00:00+02:00', 'tomorrow'), { freq: 3 })
})

const appendFields = {
  contentType: typeArb,
  body: fc.oneof(jsonBodyArb, textBodyArb),
  close: fc.constantFrom(false, false, false, false, true),
  streamSeq: fc.option(fc.constantFrom('1', '2', '3', '10', '02', 'b'), { freq: 3 }),
  producer: fc.option(fc.record({ id: fc.constantFrom('p', 'q'), epoch: fc.integer({ min: 0, max: 2 }), seq: fc.integer({ min: 0, max: 3 }) }), { freq: 2 })
}

const createArb = (stream: fc.Arbitrary<number>): fc.Arbitrary<Create> => fc.record({
  op: fc.constant('create' as const),
  stream,
  contentType: typeArb,
  closed: fc.constantFrom(false, false, true),
  body: fc.option(fc.constantFrom('[1]', '"x"', 'abc'), { freq: 4 }),
  expiry: expiryArb
})

const operationArb: fc.Arbitrary<Operation> = fc.oneof(
  { weight: 2, arbitrary: createArb(streamArb) },
  { weight: 6, arbitrary: fc.record({ op: fc.constant('append' as const), stream: streamArb, ...appendFields }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('batch' as const), stream: streamArb, appends: fc.array(fc.record(appendFields), { minLength: 2, maxLength: 6 }) }) },
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant('read' as const),
      stream: streamArb,
      from: fc.oneof(fc.constant(-1 as const), fc.constant('now' as const), fc.nat({ max: 6 })),
      live: fc.constantFrom<Read['live']>(false, false, 'long-poll', 'sse')
    }).map(read => read.live !== false && read.from === 'now' ? { ...read, from: -1 as const } : read)
  },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant('fork' as const),
      stream: streamArb,
      source: streamArb,
      at: fc.option(fc.nat({ max: 6 }), { freq: 3 }),
      // Always given: without one the reference compares a repeated fork PUT as application/octet-stream (409)
      // where the protocol has a fork inherit its source's type (200 here).
      contentType: typeArb,
      expiry: expiryArb
    })
  },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('head' as const), stream: streamArb }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('delete' as const), stream: streamArb }) }
)

/**
 * One server under test (on several nodes, taken in turn per operation), and per stream the distinct offsets it
 * answered, in the order it first gave them.
 */
interface System { name: string, bases: string[], turn: number, offsets: string[][] }

/** What an answer says, in terms every server shares (offsets as indexes into what the stream answered before). */
interface Outcome {
  status: number
  offset?: number | 'new' | 'absent'
  upToDate?: boolean
  closed?: boolean
  contentType?: string | null
  ttl?: string | null
  expiresAt?: number | null
  data?: unknown
}

function offsetIndex (system: System, stream: number, offset: string | null): number | 'new' | 'absent' {
  if (offset === null) return 'absent'
  const known = system.offsets[stream]
  const index = known.indexOf(offset)
  if (index >= 0) return index
  known.push(offset)
  return 'new'
}

interface Request { method: string, path: string, headers: Record<string, string>, body?: string }

function expiryHeaders ({ ttl, expiresAt }: Expiry): Record<string, string> {
  const headers: Record<string, string> = {}
  if (ttl !== null) headers['stream-ttl'] = ttl
  if (expiresAt !== null) headers['stream-expires-at'] = expiresAt
  return headers
}

function requestOf (system: System, run: string, operation: Exclude<Operation, Batch>): Request {
  const path = `/v1/stream/${run}-s${operation.stream}`
  switch (operation.op) {
    case 'create': {
      const headers: Record<string, string> = { 'content-type': operation.contentType }
      if (operation.closed) headers['stream-closed'] = 'true'
      return { method: 'PUT', path, headers: { ...headers, ...expiryHeaders(operation.expiry) }, body: operation.body ?? undefined }
    }
    case 'append': {
      const headers: Record<string, string> = { 'content-type': operation.contentType }
      if (operation.close) headers['stream-closed'] = 'true'
      if (operation.streamSeq !== null) headers['stream-seq'] = operation.streamSeq
      if (operation.producer !== null) {
        headers['producer-id'] = operation.producer.id
        headers['producer-epoch'] = String(operation.producer.epoch)
        headers['producer-seq'] = String(operation.producer.seq)
      }
      return { method: 'POST', path, headers, body: operation.body }
    }
    case 'read': {
      // An index no server has reached yet reads from the start on all of them alike.
      const offset = typeof operation.from === 'number' ? system.offsets[operation.stream][operation.from] ?? '-1' : String(operation.from)
      const live = operation.live === false || (operation.live === 'sse' && system.name === 'reference') ? '' : `&live=${operation.live}`
      return { method: 'GET', path: `${path}?offset=${encodeURIComponent(offset)}${live}`, headers: {} }
    }
    case 'fork': {
      const headers: Record<string, string> = { 'stream-forked-from': `/v1/stream/${run}-s${operation.source}`, 'content-type': operation.contentType }
      const at = operation.at === null ? undefined : system.offsets[operation.source][operation.at]
      if (at !== undefined) headers['stream-fork-offset'] = at
      return { method: 'PUT', path, headers: { ...headers, ...expiryHeaders(operation.expiry) } }
    }
    case 'head': return { method: 'HEAD', path, headers: {} }
    case 'delete': return { method: 'DELETE', path, headers: {} }
  }
}

interface Answer { status: number, headers: Headers, body: string }

/** Sends `requests` pipelined on one connection (so they reach the server in one go) and reads the answers in order. */
function pipelined (base: string, requests: Request[]): Promise<Answer[]> {
  const { hostname, port } = new URL(base)
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname)
    const answers: Answer[] = []
    let buffered = Buffer.alloc(0)
    socket.on('error', reject)
    socket.on('close', () => reject(new Error(`the connection closed after ${answers.length} of ${requests.length} answers`)))
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk])
      for (;;) {
        const end = buffered.indexOf('\r\n\r\n')
        if (end < 0) return
        const [statusLine, ...lines] = buffered.subarray(0, end).toString('latin1').split('\r\n')
        const headers = new Headers(lines.map(line => [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 1).trim()] as [string, string]))
        if (headers.get('transfer-encoding') !== null) return reject(new Error('a chunked answer: not expected here'))
        const length = Number(headers.get('content-length') ?? 0)
        if (buffered.length < end + 4 + length) return
        answers.push({ status: Number(statusLine.split(' ')[1]), headers, body: buffered.subarray(end + 4, end + 4 + length).toString() })
        buffered = buffered.subarray(end + 4 + length)
        if (answers.length === requests.length) {
          socket.end()
          return resolve(answers)
        }
      }
    })
    socket.write(requests.map(({ method, path, headers, body }) => {
      const bytes = Buffer.from(body ?? '')
      const head = Object.entries({ ...headers, host: hostname, 'content-length': String(bytes.length) }).map(([name, value]) => `${name}: ${value}\r\n`).join('')
      return `${method} ${path} HTTP/1.1\r\n${head}\r\n${bytes.toString('latin1')}`
    }).join(''), 'latin1')
  })
}

async function send (base: string, request: Request): Promise<Answer> {
  const controller = new AbortController()
  const response = await fetch(base + request.path, { method: request.method, headers: request.headers, body: request.body, signal: controller.signal })
  if (response.status !== 200 || response.headers.get('content-type') !== 'text/event-stream') {
    return { status: response.status, headers: response.headers, body: await response.text() }
  }
  // The SSE response does not tell the stream's content type (a client knows it): HEAD does.
  const json = (await fetch(base + request.path.split('?')[0], { method: 'HEAD' })).headers.get('content-type')?.startsWith(JSON_TYPE) === true
  const read = await readSse(response.body!, json)
  controller.abort()
  // As a catch-up read answers: the data, and the last control event's offset, up-to-date and closed flags.
  const headers = new Headers({ 'content-type': read.json ? JSON_TYPE : TEXT_TYPE, 'stream-next-offset': read.control.streamNextOffset })
  if (read.control.upToDate === true || read.control.streamClosed === true) headers.set('stream-up-to-date', 'true')
  if (read.control.streamClosed === true) headers.set('stream-closed', 'true')
  return { status: 200, headers, body: read.json ? JSON.stringify(read.messages) : read.text }
}

interface SseControl { streamNextOffset: string, upToDate?: boolean, streamClosed?: boolean }

/** Reads SSE events (as the EventSource rules parse them) up to the first control event at the tail or at EOF. */
async function readSse (body: ReadableStream<Uint8Array>, json: boolean): Promise<{ json: boolean, messages: unknown[], text: string, control: SseControl }> {
  const decoder = new TextDecoder()
  let pending = ''
  const messages: unknown[] = []
  let text = ''
  for await (const chunk of body) {
    pending += decoder.decode(chunk, { stream: true })
    let end
    while ((end = pending.indexOf('\n\n')) >= 0) {
      const lines = pending.slice(0, end).split('\n')
      pending = pending.slice(end + 2)
      let type = 'message'
      const data: string[] = []
      for (const line of lines) {
        const colon = line.indexOf(':')
        const field = colon < 0 ? line : line.slice(0, colon)
        let value = colon < 0 ? '' : line.slice(colon + 1)
        if (value.startsWith(' ')) value = value.slice(1)
        if (field === 'event') type = value
        if (field === 'data') data.push(value)
      }
      if (type === 'data') {
        const payload = data.join('\n')
        if (json) messages.push(...JSON.parse(payload) as unknown[])
        else text += payload
      }
      if (type === 'control') {
        const control = JSON.parse(data.join('\n')) as SseControl
        if (control.upToDate === true || control.streamClosed === true) return { json, messages, text, control }
      }
    }
  }
  throw new Error('the SSE response ended before reaching the tail')
}

function outcomeOf (system: System, operation: Exclude<Operation, Batch>, answer: Answer, reference?: Outcome): Outcome {
  const outcome: Outcome = { status: answer.status }
  // Error bodies differ between servers by design; the status is what clients act on.
  if (answer.status >= 300) return outcome
  // A new stream under the name starts a new offset space.
  if (operation.op === 'delete' || answer.status === 201) system.offsets[operation.stream] = []
  if (operation.op === 'delete') return outcome
  // A producer's duplicate answers 204 with the tail offset here, without one from the reference (the protocol
  // asks for neither): the offset is then not compared.
  const duplicate = operation.op === 'append' && reference?.offset === 'absent'
  outcome.offset = duplicate ? 'absent' : offsetIndex(system, operation.stream, answer.headers.get('stream-next-offset'))
  outcome.closed = answer.headers.get('stream-closed') === 'true'
  if (operation.op === 'head' || operation.op === 'create' || operation.op === 'fork') outcome.contentType = answer.headers.get('content-type')
  if (operation.op === 'head') {
    outcome.ttl = answer.headers.get('stream-ttl')
    const expiresAt = answer.headers.get('stream-expires-at')
    outcome.expiresAt = expiresAt === null ? null : Date.parse(expiresAt)
  }
  if (operation.op === 'read') {
    outcome.upToDate = answer.headers.get('stream-up-to-date') === 'true'
    const type = answer.headers.get('content-type') ?? ''
    // Nothing read is null, whatever the form: a long-poll that timed out answers 204 without a body, an SSE read
    // sends no data event (and so does not tell the stream's content type).
    const data: unknown = answer.status === 204 ? null : type.startsWith(JSON_TYPE) ? JSON.parse(answer.body) : answer.body
    outcome.data = data === '' || (Array.isArray(data) && data.length === 0) ? null : data
  }
  return outcome
}

/**
 * One operation's outcomes on `system` (a batch has one per append). A batch goes to the reference one append
 * after another, and to ours pipelined, so that the appends reach the store together (and share commits).
 */
async function perform (system: System, run: string, operation: Operation, reference?: Outcome[]): Promise<Outcome[]> {
  const base = system.bases[system.turn++ % system.bases.length]
  if (operation.op !== 'batch') return [outcomeOf(system, operation, await send(base, requestOf(system, run, operation)), reference?.[0])]
  const appends: Append[] = operation.appends.map(append => ({ ...append, op: 'append', stream: operation.stream }))
  const requests = appends.map(append => requestOf(system, run, append))
  const answers = reference === undefined ? [] : await pipelined(base, requests)
  const outcomes: Outcome[] = []
  for (const [index, append] of appends.entries()) {
    outcomes.push(outcomeOf(system, append, answers[index] ?? await send(base, requests[index]), reference?.[index]))
  }
  return outcomes
}

/** The outcomes of every system for one operation; the reference's first. */
async function step (systems: System[], run: string, operation: Operation): Promise<Outcome[][]> {
  // One system at a time: each sees the operations in the same order, and none waits on another's load.
  const [reference, ...ours] = systems
  const outcomes = [await perform(reference, run, operation)]
  for (const system of ours) outcomes.push(await perform(system, run, operation, outcomes[0]))
  return outcomes
}

const sqliteDir = await mkdtemp(join(tmpdir(), 'ds-differential-'))
const redis = await startRedisServer()
const reference = new DurableStreamTestServer({ port: 0, host: '127.0.0.1', compression: false, longPollTimeout: LONG_POLL_MS })
await reference.start()
// A sequence gap is answered at once, as the reference does (the default waits for the producer's predecessors).
const durable = { producer_reorder_wait_ms: 0, long_poll_timeout_ms: LONG_POLL_MS }
const redisAdapter = (prefix: string) => ({ class: 'modules::streams::adapters::RedisAdapter' as const, config: { redis_url: redis.url, key_prefix: prefix } })
const ours: Array<{ name: string, options: StreamsOptions, nodes: number }> = [
  { name: 'memory', options: { durable_streams: durable }, nodes: 1 },
  { name: 'SQLite', options: { adapter: { class: 'modules::streams::adapters::KvStore', config: { store_method: 'file_based', file_path: join(sqliteDir, 'streams.db') } }, durable_streams: durable }, nodes: 1 },
  { name: 'Redis', options: { adapter: redisAdapter('one:'), durable_streams: durable }, nodes: 1 },
  // Every other operation on the other node: what a node remembers of a stream must never outlive a change made on the other.
  { name: 'Redis, two nodes', options: { adapter: redisAdapter('two:'), durable_streams: durable }, nodes: 2 }
]
const apps = await Promise.all(ours.map(({ options, nodes }) => Promise.all(Array.from({ length: nodes }, () => serve(options)))))
t.teardown(async () => {
  await Promise.all(apps.flat().map(({ app }) => app.close()))
  await reference.stop()
  await redis.close()
  await rm(sqliteDir, { recursive: true, force: true })
})

const servers = [{ name: 'reference', urls: [reference.url] }, ...ours.map(({ name }, index) => ({ name, urls: apps[index].map(({ url }) => url.replace('ws:', 'http:')) }))]
const fresh = (): System[] => servers.map(({ name, urls }) => ({ name, bases: urls.map(url => url.replace(/\/$/, '')), turn: 0, offsets: Array.from({ length: STREAMS }, () => []) }))

t.test('random operations: every store answers as the reference server does', async t => {
  let runs = 0
  let operations = 0
  // Each run starts by creating its streams (most often open), so that most operations find them.
  const setupArb = fc.tuple(...Array.from({ length: STREAMS }, (_, stream) => fc.option(createArb(fc.constant(stream)), { freq: 6 })))
    .map(creates => creates.filter(create => create !== null))
  const sequenceArb = fc.tuple(setupArb, fc.array(operationArb, { minLength: 1, maxLength: 30, size: 'max' })).map(([setup, rest]) => [...setup, ...rest])
  await fc.assert(fc.asyncProperty(sequenceArb, async (sequence) => {
    const run = `r${runs++}`
    const systems = fresh()
    // Streams deleted while forks read them answer 410 to everything (PROTOCOL.md 4.2); the reference still takes
    // a close without a body, checking its producer headers, so ours are held to the protocol there.
    const softDeleted = new Set<number>()
    for (const [index, operation] of sequence.entries()) {
      const [expected, ...actual] = await step(systems, run, operation)
      operations += expected.length
      // A fork's PUT without an expiry asks for what it inherits (200 here); the reference compares it as asking for
      // none, and answers 409 when the existing fork has one.
      if (operation.op === 'fork' && operation.expiry.ttl === null && operation.expiry.expiresAt === null && expected[0].status === 409 &&
        actual.every(([outcome]) => outcome.status === 200 && typeof outcome.offset === 'number')) {
        expected[0] = actual[0][0]
      }
      // A long-poll with nothing to read waits (PROTOCOL.md 5.7) and answers 204; the reference answers one from
      // -1 on an empty stream at once with an empty 200.
      const [first] = expected
      if (operation.op === 'read' && operation.live === 'long-poll' && first.status === 200 && first.upToDate === true && first.data === null) {
        expected[0] = { ...first, status: 204, data: null }
      }
      if (softDeleted.has(operation.stream)) {
        const appends = operation.op === 'batch' ? operation.appends : operation.op === 'append' ? [operation] : []
        for (const [at, append] of appends.entries()) {
          if (append.body === '' && append.close) expected[at] = { status: 410 }
        }
      }
      if (expected[0].status === 201) softDeleted.delete(operation.stream)
      if (operation.op === 'delete' && expected[0].status === 204 && (await send(systems[0].bases[0], requestOf(systems[0], run, { op: 'head', stream: operation.stream }))).status === 410) {
        softDeleted.add(operation.stream)
      }
      for (const [which, outcome] of actual.entries()) {
        if (JSON.stringify(outcome) !== JSON.stringify(expected)) {
          throw new Error(`${systems[which + 1].name} differs at operation ${index} ${JSON.stringify(operation)}: ${JSON.stringify(outcome)} where the reference answers ${JSON.stringify(expected)}`)
        }
      }
    }
  }), { numRuns: Number(process.env.DURABLE_DIFFERENTIAL_RUNS ?? 150) })
  t.ok(operations > 500, `${operations} operations compared on ${runs} runs`)
})
