// Durable streams beyond the conformance suite: options, refusals of bad input, auth and authorization,
// live reader limits and shutdown, and the official client's producer and live reader.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Agent, request as httpRequest, type ClientRequest } from 'node:http'
import { test } from 'tap'
import Fastify from 'fastify'
import { DurableStream, IdempotentProducer, stream } from '@durable-streams/client'
import streams, { createKvAdapter, type StreamsOptions } from '../../lib/index.js'
import { DEFAULT_PRODUCER_REORDER_WAIT_MS as PRODUCER_REORDER_WAIT_MS } from '../../lib/options.js'
import { serve, waitFor } from '../helpers/app.js'

async function serveHttp (options: StreamsOptions, setup?: Parameters<typeof serve>[1]): Promise<{ base: string, close: () => Promise<void> }> {
  const { app, url } = await serve({ durable_streams: true, ...options }, setup)
  return { base: url.replace('ws://', 'http://').replace(/\/$/, ''), close: () => app.close() }
}

/** A request whose path goes out byte for byte (fetch would normalise `..` and encoded characters). */
function rawRequest (base: string, method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<{ status: number, body: any }> {
  const { hostname, port } = new URL(base)
  return new Promise((resolve, reject) => {
    const req = httpRequest({ hostname, port, method, path, headers }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString()
        resolve({ status: res.statusCode ?? 0, body: text.startsWith('{') ? JSON.parse(text) : text })
      })
    })
    req.on('error', reject)
    req.end(body)
  })
}

async function put (base: string, name: string, headers: Record<string, string> = { 'content-type': 'text/plain' }, body?: string): Promise<Response> {
  return fetch(`${base}/v1/stream/${name}`, { method: 'PUT', headers, body })
}

test('starting durable streams prints no warning (Fastify warns about loose content-type patterns, once per process)', async (t) => {
  const warnings: string[] = []
  const record = (warning: Error): void => { warnings.push(`${warning.name}: ${warning.message}`) }
  process.on('warning', record)
  t.teardown(() => { process.off('warning', record) })
  const { close } = await serveHttp({})
  await close()
  // Warnings are emitted on the next tick.
  await new Promise(resolve => setImmediate(resolve))
  t.same(warnings, [])
})

test('durable_streams is off by default and its options are checked before anything starts', async (t) => {
  const { app, url } = await serve({})
  t.teardown(() => app.close())
  const res = await fetch(`${url.replace('ws://', 'http://')}v1/stream/a`, { method: 'PUT' })
  t.equal(res.status, 404, 'no durable stream routes without the option')

  for (const [value, key] of [['yes', 'durable_streams'], [{ path: 'v1' }, 'durable_streams.path'], [{ path: '/v1/' }, 'durable_streams.path'],
    [{ long_poll_timeout_ms: 0 }, 'durable_streams.long_poll_timeout_ms'], [{ producer_reorder_wait_ms: -1 }, 'durable_streams.producer_reorder_wait_ms'], [{ colour: 'red' }, 'durable_streams.colour'],
    [{ authorize_function: 3 }, 'durable_streams.authorize_function']] as const) {
    const bad = Fastify()
    await t.rejects(async () => { await bad.register(streams, { durable_streams: value as never }) }, { code: 'STREAMS_ERR_INVALID_OPTION', key }, `${JSON.stringify(value)} is refused`)
    await bad.close()
  }
})

test('durable_streams.path moves the stream URLs', async (t) => {
  const { base, close } = await serveHttp({ durable_streams: { path: '/streams' } })
  t.teardown(close)
  t.equal((await fetch(`${base}/streams/a`, { method: 'PUT', headers: { 'content-type': 'text/plain' }, body: 'x' })).status, 201)
  t.equal(await (await fetch(`${base}/streams/a`)).text(), 'x')
  t.equal((await fetch(`${base}/v1/stream/a`)).status, 404, 'the default path is not served')
})

test('bad input gets a coded refusal and the stream stays intact', async (t) => {
  const { base, close } = await serveHttp({ durable_streams: { max_append_bytes: 1024 } })
  t.teardown(close)
  t.equal((await put(base, 'ok', { 'content-type': 'text/plain' }, 'kept')).status, 201)
  const url = `${base}/v1/stream/ok`

  const big = await fetch(url, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'x'.repeat(2048) })
  t.equal(big.status, 413, 'an oversized body is 413')
  t.equal((await big.json()).code, 'STREAMS_ERR_PAYLOAD_TOO_LARGE')
  t.equal(big.headers.get('x-content-type-options'), 'nosniff', 'refusals carry the browser security headers')

  for (const offset of ['abc', '0000_12', '0000000000000000_000000000000001x', '-2', '00000000000000000000000000000000']) {
    const res = await fetch(`${url}?offset=${encodeURIComponent(offset)}`)
    t.equal(res.status, 400, `offset ${offset} is refused`)
    t.equal((await res.json()).code, 'STREAMS_ERR_STREAM_REQUEST')
  }
  const beyond = await fetch(`${url}?offset=0000000000000000_0000000000009999`)
  t.equal(beyond.status, 400, 'an offset past the tail is refused')
  t.equal((await fetch(`${url}?offset=-1&live=forever`)).status, 400, 'an unknown live mode is refused')

  for (const headers of [
    { 'producer-id': 'p', 'producer-epoch': '0', 'producer-seq': '01' },
    { 'producer-id': 'p', 'producer-epoch': '9007199254740993', 'producer-seq': '0' },
    { 'producer-id': 'p', 'producer-seq': '0' },
    { 'stream-seq': '' }
  ] as Array<Record<string, string>>) {
    const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'text/plain', ...headers }, body: 'no' })
    t.equal(res.status, 400, `${JSON.stringify(headers)} is refused`)
    t.equal((await res.json()).code, 'STREAMS_ERR_STREAM_REQUEST')
  }
  for (const headers of [{ 'stream-ttl': '1.5' }, { 'stream-expires-at': '2030-01-01' }, { 'stream-fork-offset': START }] as Array<Record<string, string>>) {
    const res = await put(base, 'other', { 'content-type': 'text/plain', ...headers })
    t.equal(res.status, 400, `PUT with ${JSON.stringify(headers)} is refused`)
  }

  for (const path of ['/v1/stream/a/../ok', '/v1/stream/a/./b', '/v1/stream/a%2Fb', '/v1/stream/a%2fb', '/v1/stream/a%00b', '/v1/stream/a%5Cb',
    '/v1/stream/a//b', `/v1/stream/${'n'.repeat(1025)}`]) {
    const res = await rawRequest(base, 'PUT', path, { 'content-type': 'text/plain' }, 'evil')
    t.equal(res.status, 400, `${path.slice(0, 40)} is refused`)
    t.equal(res.body.code, 'STREAMS_ERR_STREAM_REQUEST')
  }

  t.equal((await rawRequest(base, 'GET', '/v1/stream/%E0%A4%A')).status, 400, 'broken percent-encoding is refused (by Fastify)')

  const read = await fetch(url)
  t.equal(await read.text(), 'kept', 'the stream holds exactly what was accepted')
  t.equal(read.headers.get('stream-next-offset'), '0000000000000000_0000000000000004')
})

const START = '0000000000000000_0000000000000000'

/** The value of an SSE `data:` line as EventSource reads it: one space after the colon is dropped. */
function sseValue (line: string): string {
  const value = line.slice('data:'.length)
  return value.startsWith(' ') ? value.slice(1) : value
}

test('every request is authenticated; authorize_function sees each operation and may refuse it', async (t) => {
  const seen: Array<{ method: string, path: string, operation: string, context: unknown }> = []
  const { base, close } = await serveHttp({
    auth_function: 'auth',
    durable_streams: { authorize_function: 'authorize' }
  }, (app) => {
    app.streams.registerFunction({
      function_path: 'auth',
      handler: (input: { headers: Record<string, string> }) => {
        if (input.headers.authorization === undefined) throw new Error('no token')
        return { context: { user: input.headers.authorization } }
      }
    })
    app.streams.registerFunction({
      function_path: 'authorize',
      handler: (input: { method: string, path: string, operation: string, context: { user: string } }) => {
        seen.push(input)
        if (input.path.startsWith('/v1/stream/private/')) return input.context.user === 'admin'
        return input.operation === 'delete' ? { unauthorized: true } : true
      }
    })
  })
  t.teardown(close)
  const ana = { authorization: 'ana', 'content-type': 'text/plain' }

  const anonymous = await fetch(`${base}/v1/stream/doc`, { method: 'PUT', headers: { 'content-type': 'text/plain' } })
  t.equal(anonymous.status, 401)
  t.equal((await anonymous.json()).code, 'STREAMS_ERR_UNAUTHORIZED')

  t.equal((await fetch(`${base}/v1/stream/doc`, { method: 'PUT', headers: ana, body: 'a' })).status, 201)
  t.equal((await fetch(`${base}/v1/stream/doc`, { method: 'POST', headers: ana, body: 'b' })).status, 204)
  t.equal(await (await fetch(`${base}/v1/stream/doc`, { headers: ana })).text(), 'ab')
  t.equal((await fetch(`${base}/v1/stream/doc`, { method: 'HEAD', headers: ana })).status, 200)
  const refused = await fetch(`${base}/v1/stream/doc`, { method: 'DELETE', headers: ana })
  t.equal(refused.status, 403)
  t.equal((await refused.json()).code, 'STREAMS_ERR_FORBIDDEN')
  t.same(seen.map(input => input.operation), ['create', 'append', 'read', 'head', 'delete'])
  t.same(seen[0], { method: 'PUT', path: '/v1/stream/doc', operation: 'create', context: { user: 'ana' } })

  const admin = { authorization: 'admin', 'content-type': 'text/plain' }
  t.equal((await fetch(`${base}/v1/stream/private/notes`, { method: 'PUT', headers: admin, body: 'secret' })).status, 201)
  t.equal((await fetch(`${base}/v1/stream/private/notes`, { headers: ana })).status, 403, 'ana may not read it')
  const fork = await fetch(`${base}/v1/stream/copy`, { method: 'PUT', headers: { ...ana, 'stream-forked-from': '/v1/stream/private/notes' } })
  t.equal(fork.status, 403, 'nor copy it into a fork of her own')
  t.equal((await fetch(`${base}/v1/stream/copy`, { headers: ana })).status, 404, 'the refused fork does not exist')
})

test('live readers are bounded, and closing the app ends open SSE and long-poll responses', async (t) => {
  const { base, close } = await serveHttp({ durable_streams: { max_live_readers: 2, long_poll_timeout_ms: 600_000 } })
  t.equal((await put(base, 'live')).status, 201)
  const url = `${base}/v1/stream/live?offset=-1`

  const poll = fetch(`${url}&live=long-poll`)
  // SSE readers take a slot before their headers go out: open them until the limit refuses one.
  const open: Response[] = []
  let refused: Response
  for (;;) {
    const res = await fetch(`${url}&live=sse`)
    if (res.status !== 200) {
      refused = res
      break
    }
    open.push(res)
  }
  t.equal(refused.status, 503, 'a live reader past the limit is refused')
  t.equal((await refused.json()).code, 'STREAMS_ERR_TOO_MANY_READERS')
  t.equal(open.length, 1, 'the long-poll and one SSE reader hold the two slots')
  const sseText = open[0].text()

  await close()
  const polled = await poll
  t.equal(polled.status, 204, 'the waiting long-poll answers 204 on shutdown')
  t.equal(polled.headers.get('stream-up-to-date'), 'true')
  t.match(await sseText, /event: control\ndata:\{"streamNextOffset":"0000000000000000_0000000000000000"/, 'the SSE response ended')
})

test('the official client: an IdempotentProducer\'s batches reach a live stream() reader exactly once', async (t) => {
  const { base, close } = await serveHttp({})
  t.teardown(close)
  const url = `${base}/v1/stream/tokens`
  const handle = await DurableStream.create({ url, contentType: 'application/json' })
  const received: unknown[] = []
  const done = new Promise<void>((resolve, reject) => {
    stream<{ n: number }>({ url, offset: '-1', live: 'sse' }).then((response) => {
      response.subscribeJson(async (batch) => {
        received.push(...batch.items)
        if (received.length >= 500) {
          response.cancel()
          resolve()
        }
      })
    }, reject)
  })
  const producer = new IdempotentProducer(handle, 'writer-1', { lingerMs: 1 })
  for (let n = 0; n < 500; n++) producer.append(JSON.stringify({ n }))
  await producer.flush()
  await done
  t.same(received, Array.from({ length: 500 }, (_, n) => ({ n })), 'every message once, in order')
  const all = await (await fetch(url)).json()
  t.equal(all.length, 500, 'the stream holds each message once')
})

test('the official client reads a text stream over SSE as written: lines that start with spaces keep them', async (t) => {
  const { base, close } = await serveHttp({})
  t.teardown(close)
  const url = `${base}/v1/stream/indented`
  const text = ' one\n  two\nthree \n\n   '
  await DurableStream.create({ url, contentType: 'text/plain' })
  // The client reads what is there with a plain GET, then goes live over SSE: the text comes after.
  const response = await stream({ url, offset: '-1', live: 'sse' })
  let received = ''
  let live = false
  await new Promise<void>((resolve, reject) => {
    response.subscribeText((chunk) => {
      received += chunk.text
      if (!chunk.upToDate) return
      if (live && received !== '') return resolve()
      live = true
      // A plain POST: the client's own append leaves a timer running that keeps this process alive.
      fetch(url, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: text }).catch(reject)
    })
  })
  response.cancel()
  t.equal(received, text)
})

test('two thousand idle SSE readers each get the next append, and a reader that leaves frees its slot', async (t) => {
  const READERS = 2000
  const { base, close } = await serveHttp({ durable_streams: { max_live_readers: READERS } })
  t.teardown(close)
  t.equal((await put(base, 'fanout')).status, 201)
  const agent = new Agent({ keepAlive: false, maxSockets: Infinity })
  t.teardown(() => agent.destroy())
  const { hostname, port } = new URL(base)
  const readers = await Promise.all(Array.from({ length: READERS }, () => new Promise<{ text: () => string, req: ClientRequest }>((resolve, reject) => {
    const req = httpRequest({ hostname, port, agent, path: '/v1/stream/fanout?offset=-1&live=sse' }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => {
        text += chunk
        // Ready once the first control event (caught up) is in.
        if (text.includes('"upToDate":true')) resolve({ text: () => text, req })
      })
    })
    req.on('error', reject)
    req.end()
  })))
  const refused = await fetch(`${base}/v1/stream/fanout?offset=-1&live=sse`)
  t.equal(refused.status, 503, 'the limit holds')
  readers[0].req.destroy()
  let admitted: Response
  // The server frees the slot when it sees the socket close.
  do admitted = await fetch(`${base}/v1/stream/fanout?offset=-1&live=sse`, { signal: AbortSignal.timeout(2000) })
  while (admitted.status === 503)
  t.equal(admitted.status, 200, 'a reader that left freed its slot')
  await admitted.body?.cancel()

  t.equal((await fetch(`${base}/v1/stream/fanout`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'marker' })).status, 204)
  const waiting = readers.slice(1)
  const deadline = Date.now() + 30_000
  while (waiting.some(reader => !reader.text().includes('data:marker')) && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
  t.equal(waiting.filter(reader => reader.text().includes('event: data\ndata:marker\n')).length, READERS - 1, 'every remaining reader got the append')
  for (const reader of waiting) reader.req.destroy()
})

test('app.streams.durable and the registry functions write and read streams without HTTP; HTTP readers see it', async (t) => {
  const { app, url } = await serve({ durable_streams: true }, (app) => {
    app.post('/progress/:job', async (request) => app.streams.durable!.append(`jobs/${(request.params as { job: string }).job}`, request.body))
  })
  t.teardown(() => app.close())
  const base = url.replace('ws://', 'http://').replace(/\/$/, '')
  const durable = app.streams.durable!
  t.same(await durable.create('jobs/7', { contentType: 'application/json', data: [{ step: 0 }] }), { created: true, offset: '0000000000000000_0000000000000001' })
  const poll = fetch(`${base}/v1/stream/jobs/7?offset=0000000000000000_0000000000000001&live=long-poll`)
  const posted = await fetch(`${base}/progress/7`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ step: 1 }) })
  t.same(await posted.json(), { offset: '0000000000000000_0000000000000002', duplicate: false, closed: false }, 'a route handler appended')
  t.same(await (await poll).json(), [{ step: 1 }], 'the waiting HTTP long-poll got it')

  t.same(await app.streams.call('durable_streams.append', { name: 'jobs/7', data: [{ step: 2 }, { step: 3 }] }), { offset: '0000000000000000_0000000000000004', duplicate: false, closed: false })
  await durable.close('jobs/7')
  t.same(await durable.read('jobs/7'), { messages: [{ step: 0 }, { step: 1 }, { step: 2 }, { step: 3 }], nextOffset: '0000000000000000_0000000000000004', upToDate: true, closed: true })
  t.same(await app.streams.call('durable_streams.head', { name: 'jobs/7' }), { contentType: 'application/json', offset: '0000000000000000_0000000000000004', closed: true, ttlSeconds: null, expiresAt: null })
  await t.rejects(durable.append('jobs/7', { late: true }), { code: 'STREAMS_ERR_STREAM_CLOSED' }, 'the rules hold without HTTP too')
  await t.rejects(durable.create('../etc'), { code: 'STREAMS_ERR_STREAM_REQUEST' }, 'names are checked as URL paths are')

  await durable.create('log', { contentType: 'text/plain' })
  await durable.append('log', 'a\n')
  await durable.append('log', new Uint8Array([98]))
  t.equal((await durable.read('log')).data?.toString(), 'a\nb')
  await t.rejects(durable.append('log', { not: 'bytes' }), { code: 'STREAMS_ERR_INVALID_ARGUMENT' })
  await durable.delete('log')
  await t.rejects(durable.head('log'), { code: 'STREAMS_ERR_STREAM_NOT_FOUND' })
})

test('app.streams.durable appends encode for the stream as it is now, after it was created again with another content type', async (t) => {
  const { app, url } = await serve({ durable_streams: true })
  t.teardown(() => app.close())
  const base = url.replace('ws://', 'http://').replace(/\/$/, '')
  const durable = app.streams.durable!
  await durable.create('changing', { contentType: 'text/plain' })
  await durable.append('changing', 'text')
  // Replaced over HTTP, behind the API's back: first by a JSON stream, then by a text stream again.
  t.equal((await fetch(`${base}/v1/stream/changing`, { method: 'DELETE' })).status, 204)
  t.equal((await put(base, 'changing', { 'content-type': 'application/json' })).status, 201)
  await durable.append('changing', { now: 'json' })
  await durable.append('changing', 'a string is a JSON message here')
  t.same((await durable.read('changing')).messages, [{ now: 'json' }, 'a string is a JSON message here'], 'encoded as JSON')
  t.equal((await fetch(`${base}/v1/stream/changing`, { method: 'DELETE' })).status, 204)
  t.equal((await put(base, 'changing')).status, 201)
  await durable.append('changing', 'bytes again')
  t.equal((await durable.read('changing')).data?.toString(), 'bytes again', 'encoded as bytes')
  await t.rejects(durable.append('changing', { not: 'bytes' }), { code: 'STREAMS_ERR_INVALID_ARGUMENT' }, 'refused as before when the data cannot be the stream\'s')
})

test('catch-up reads come in chunks of read_chunk_bytes, on memory and on SQLite', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ds-chunks-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  for (const [label, adapter] of [['memory', undefined], ['SQLite', { class: 'modules::streams::adapters::KvStore', config: { store_method: 'file_based', file_path: join(dir, 'chunks.db') } }]] as const) {
    const { base, close } = await serveHttp({ adapter, durable_streams: { read_chunk_bytes: 1000 } })
    t.equal((await put(base, 'bytes', { 'content-type': 'application/octet-stream' })).status, 201)
    t.equal((await put(base, 'json', { 'content-type': 'application/json' })).status, 201)
    t.equal((await put(base, 'batches', { 'content-type': 'application/json' })).status, 201)
    for (let n = 0; n < 200; n++) {
      await fetch(`${base}/v1/stream/bytes`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: Buffer.alloc(100, n) })
      await fetch(`${base}/v1/stream/json`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ n, pad: 'x'.repeat(80) }) })
    }
    // Appends of 8 messages (about 720 bytes): chunks end and begin inside them; every other append holds a non-ASCII character.
    for (let batch = 0; batch < 25; batch++) {
      const messages = Array.from({ length: 8 }, (_, k) => ({ n: batch * 8 + k, pad: (batch % 2 === 0 ? 'x' : 'é').repeat(70) }))
      await fetch(`${base}/v1/stream/batches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(messages) })
    }
    for (const name of ['bytes', 'json', 'batches']) {
      const sizes: number[] = []
      const parts: Buffer[] = []
      const messages: unknown[] = []
      let offset = '-1'
      for (;;) {
        const res = await fetch(`${base}/v1/stream/${name}?offset=${offset}`)
        const body = Buffer.from(await res.arrayBuffer())
        // The chunk size counts bytes, of JSON messages too (an é is two).
        sizes.push(body.length)
        if (name !== 'bytes') messages.push(...JSON.parse(body.toString()))
        else parts.push(body)
        offset = res.headers.get('stream-next-offset')!
        if (res.headers.get('stream-up-to-date') === 'true') break
      }
      t.ok(sizes.length >= 15 && Math.max(...sizes) <= 1100, `${label} ${name}: ${sizes.length} reads of at most about 1000 bytes`)
      if (name === 'json') t.same(messages, Array.from({ length: 200 }, (_, n) => ({ n, pad: 'x'.repeat(80) })), `${label}: every message once, in order`)
      else if (name === 'batches') t.same(messages, Array.from({ length: 200 }, (_, n) => ({ n, pad: (Math.floor(n / 8) % 2 === 0 ? 'x' : 'é').repeat(70) })), `${label}: every batched message once, in order`)
      else t.same(Buffer.concat(parts), Buffer.concat(Array.from({ length: 200 }, (_, n) => Buffer.alloc(100, n))), `${label}: every byte once, in order`)
    }
    await close()
  }
})

test('SSE never splits a UTF-8 character of a text stream across data events', async (t) => {
  const { base, close } = await serveHttp({ durable_streams: { read_chunk_bytes: 4 } })
  t.teardown(close)
  const text = 'héllo wörld, ≈ 🌍 done'
  t.equal((await put(base, 'utf8', { 'content-type': 'text/plain; charset=utf-8' }, text)).status, 201)
  const res = await fetch(`${base}/v1/stream/utf8?offset=-1&live=sse`)
  const reader = res.body!.getReader()
  let raw = ''
  while (!raw.includes('"upToDate":true')) raw += Buffer.from((await reader.read()).value!).toString()
  await reader.cancel()
  const data = raw.split('\n\n').filter(block => block.startsWith('event: data')).map(block => block.split('\n').slice(1).map(sseValue).join('\n'))
  t.ok(data.length > 5, `${data.length} data events`)
  t.notOk(data.some(chunk => chunk.includes('\uFFFD')), 'no event holds a broken character')
  t.equal(data.join(''), text, 'together they are the text')
})

test('JSON messages are kept as sent, and a body with line breaks between its tokens still reaches SSE readers as JSON', async (t) => {
  const { base, close } = await serveHttp({})
  t.teardown(close)
  const url = `${base}/v1/stream/json-text`
  t.equal((await put(base, 'json-text', { 'content-type': 'application/json' })).status, 201)
  const post = async (body: string): Promise<number> => (await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body })).status
  t.equal(await post('[{"s":"a,]}[{\\"b"}, [1,[2]] ,"x"]'), 204)
  t.equal(await post('[\n{"n":\r\n1},\n2\n]'), 204)
  t.equal(await post(' {"one": true} '), 204)
  const expected = [{ s: 'a,]}[{"b' }, [1, [2]], 'x', { n: 1 }, 2, { one: true }]
  t.same(await (await fetch(url)).json(), expected, 'a catch-up read gives every message')
  const res = await fetch(`${url}?offset=-1&live=sse`)
  const reader = res.body!.getReader()
  let raw = ''
  while (!raw.includes('"upToDate":true')) raw += Buffer.from((await reader.read()).value!).toString()
  await reader.cancel()
  const data = raw.split('\n\n').filter(block => block.startsWith('event: data')).map(block => JSON.parse(block.split('\n').slice(1).map(sseValue).join('\n')))
  t.same(data.flat(), expected, 'SSE data events parse as the same messages')
})

test('Stream-Closed counts only as "true": a PUT compares it with the stream\'s closure; other values are as if absent', async (t) => {
  const { base, close } = await serveHttp({})
  t.teardown(close)
  const text = { 'content-type': 'text/plain' }
  t.equal((await put(base, 'done', { ...text, 'stream-closed': 'true' })).status, 201)
  t.equal((await put(base, 'done', text)).status, 409, 'a PUT without Stream-Closed does not ensure a closed stream')
  t.equal((await put(base, 'done', { ...text, 'stream-closed': 'TRUE' })).status, 200, 'a PUT closing it again does, in any case')
  t.equal((await put(base, 'open', text)).status, 201)
  t.equal((await put(base, 'open', { ...text, 'stream-closed': 'true' })).status, 409, 'a closing PUT does not ensure an open stream')
  t.equal((await put(base, 'open', { ...text, 'stream-closed': 'maybe' })).status, 200, 'another value is no Stream-Closed')
  const url = `${base}/v1/stream/open`
  const appended = await fetch(url, { method: 'POST', headers: { ...text, 'stream-closed': 'yes' }, body: 'a' })
  t.equal(appended.status, 204, 'an append with Stream-Closed: yes is a plain append')
  t.equal(appended.headers.get('stream-closed'), null, 'which leaves the stream open')
  t.equal((await fetch(url, { method: 'POST', headers: { ...text, 'stream-closed': 'false' }, body: 'b' })).status, 204)
  t.equal(await (await fetch(url)).text(), 'ab')
})

test('a repeated PUT compares what it asks for: no expiry or content type given means none and the default', async (t) => {
  const { base, close } = await serveHttp({})
  t.teardown(close)
  const json = { 'content-type': 'application/json' }
  t.equal((await put(base, 'kept', { ...json, 'stream-ttl': '3600' })).status, 201)
  t.equal((await put(base, 'kept', { ...json, 'stream-ttl': '3600' })).status, 200)
  t.equal((await put(base, 'kept', json)).status, 409, 'without Stream-TTL: a stream that does not expire')
  t.equal((await put(base, 'kept', { 'stream-ttl': '3600' })).status, 409, 'without Content-Type: application/octet-stream')
  t.equal((await put(base, 'dated', { ...json, 'stream-expires-at': '2099-01-01T00:00:00Z' })).status, 201)
  t.equal((await put(base, 'dated', { ...json, 'stream-expires-at': '2099-01-01T01:00:00.000+01:00' })).status, 200, 'the same instant written otherwise')
  t.equal((await put(base, 'dated', { ...json, 'stream-expires-at': '2099-01-01T00:00:01Z' })).status, 409, 'another instant')
  t.equal((await put(base, 'fork', { 'stream-forked-from': '/v1/stream/kept' })).status, 201)
  t.equal((await put(base, 'fork', { 'stream-forked-from': '/v1/stream/kept' })).status, 200, 'a fork\'s PUT without them asks for what it inherits')
})

test('a repeated PUT of a fork compares what it asks for, not the source as it is now', async (t) => {
  const { base, close } = await serveHttp({})
  t.teardown(close)
  const text = { 'content-type': 'text/plain' }
  const fork = { ...text, 'stream-forked-from': '/v1/stream/source' }
  t.equal((await put(base, 'source', text)).status, 201)
  await fetch(`${base}/v1/stream/source`, { method: 'POST', headers: text, body: 'ab' })
  t.equal((await put(base, 'fork', fork)).status, 201, 'a fork at the source\'s tail')
  await fetch(`${base}/v1/stream/source`, { method: 'POST', headers: text, body: 'cd' })
  t.equal((await put(base, 'fork', fork)).status, 200, 'a retry without an offset after the source grew')
  t.equal((await put(base, 'fork', { ...fork, 'stream-fork-offset': '0000000000000000_0000000000000002' })).status, 200, 'with the offset it got')
  t.equal((await put(base, 'fork', { ...fork, 'stream-fork-offset': START })).status, 409, 'with another offset')
  t.equal((await fetch(`${base}/v1/stream/source`, { method: 'DELETE' })).status, 204)
  t.equal((await put(base, 'fork', fork)).status, 200, 'a retry after the source was deleted')
  t.equal((await put(base, 'plain', text)).status, 201)
  t.equal((await put(base, 'plain', { ...text, 'stream-forked-from': '/v1/stream/missing' })).status, 409, 'an existing stream answers before a missing source')
  t.equal(await (await fetch(`${base}/v1/stream/fork`)).text(), 'ab')
})

test('an append\'s refusals come in the protocol\'s order: closed, content type, producer, Stream-Seq', async (t) => {
  const { base, close } = await serveHttp({})
  t.teardown(close)
  const json = { 'content-type': 'application/json' }
  const producer = (epoch: number, seq: number) => ({ 'producer-id': 'p', 'producer-epoch': String(epoch), 'producer-seq': String(seq) })
  const post = (name: string, headers: Record<string, string>, body = '[1]') => fetch(`${base}/v1/stream/${name}`, { method: 'POST', headers, body })
  t.equal((await put(base, 'order', json)).status, 201)
  t.equal((await post('order', { ...json, ...producer(1, 0), 'stream-seq': '5' })).status, 200)

  const text = { 'content-type': 'text/plain' }
  const staleOfOtherType = await post('order', { ...text, ...producer(0, 0) }, 'x')
  t.equal(staleOfOtherType.status, 409, 'content type before fencing')
  t.equal((await staleOfOtherType.json()).code, 'STREAMS_ERR_STREAM_CONFLICT')
  t.equal((await post('order', { ...text, ...producer(1, 0) }, 'x')).status, 409, 'content type before duplicates')
  t.equal((await post('order', { ...json, ...producer(2, 1) })).status, 400, 'a new epoch starts at seq 0')
  const gapAndRegression = await post('order', { ...json, ...producer(1, 3), 'stream-seq': '4' })
  t.equal(gapAndRegression.status, 409, 'a producer gap before a Stream-Seq regression')
  t.equal(gapAndRegression.headers.get('producer-expected-seq'), '1')
  const closing = await post('order', { ...json, 'stream-closed': 'true', 'stream-seq': '5' }, '')
  t.equal(closing.status, 204, 'a close without a body does not check Stream-Seq')
  t.equal(closing.headers.get('stream-closed'), 'true')
  for (const [headers, what] of [[producer(1, 0), 'an earlier batch of the producer'], [producer(0, 0), 'a fenced producer']] as const) {
    const refused = await post('order', { ...json, ...headers })
    t.equal(refused.status, 409, `closed before anything else: ${what}`)
    t.equal(refused.headers.get('stream-closed'), 'true')
  }

  t.equal((await put(base, 'last', json)).status, 201)
  t.equal((await post('last', { ...json, ...producer(0, 0), 'stream-closed': 'true' })).status, 200, 'a producer appends and closes')
  const repeat = await post('last', { ...json, ...producer(0, 0), 'stream-closed': 'true' })
  t.equal(repeat.status, 204, 'the repeat of the closing request is a duplicate')
  t.equal(repeat.headers.get('stream-closed'), 'true')
  t.equal((await post('last', { ...json, ...producer(0, 1) })).status, 409, 'any other append to the closed stream is refused')
  t.same(await (await fetch(`${base}/v1/stream/last`)).json(), [1], 'appended once')
})

test('a producer\'s batch that arrives before its predecessor waits for it (no 409); a pipelined producer loses and repeats nothing', async (t) => {
  const { app, url: wsUrl } = await serve({ durable_streams: true })
  t.teardown(() => app.close())
  const base = wsUrl.replace('ws://', 'http://').replace(/\/$/, '')
  let refusedAsGap = 0
  app.server.on('request', (_req, res) => { res.on('finish', () => { if (res.statusCode === 409) refusedAsGap++ }) })
  const url = `${base}/v1/stream/ordered`
  t.equal((await put(base, 'ordered', { 'content-type': 'application/json' })).status, 201)
  const batch = (seq: number, body: string): Promise<Response> => fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'producer-id': 'p', 'producer-epoch': '0', 'producer-seq': String(seq) },
    body
  })

  const second = batch(1, '[{"n":1}]')
  await new Promise(resolve => setTimeout(resolve, 100))
  const first = await batch(0, '[{"n":0}]')
  t.equal(first.status, 200, 'the predecessor is appended')
  t.equal((await second).status, 200, 'the batch that came first is appended after it, not refused')
  t.same(await (await fetch(url)).json(), [{ n: 0 }, { n: 1 }], 'in sequence order')

  const started = Date.now()
  const orphan = await batch(5, '[{"n":5}]')
  t.equal(orphan.status, 409, 'a gap nobody fills is refused')
  t.equal((await orphan.json()).code, 'STREAMS_ERR_PRODUCER_SEQ_GAP')
  t.ok(Date.now() - started >= PRODUCER_REORDER_WAIT_MS - 50, 'after waiting for its predecessors a bounded time')

  const impatient = await serveHttp({ durable_streams: { producer_reorder_wait_ms: 0 } })
  t.teardown(impatient.close)
  t.equal((await put(impatient.base, 'ordered', { 'content-type': 'application/json' })).status, 201)
  const refusedAt = Date.now()
  const gap = await fetch(`${impatient.base}/v1/stream/ordered`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'producer-id': 'p', 'producer-epoch': '0', 'producer-seq': '1' },
    body: '[1]'
  })
  t.equal(gap.status, 409, 'with producer_reorder_wait_ms: 0 a gap is refused')
  t.equal(gap.headers.get('producer-expected-seq'), '0')
  t.ok(Date.now() - refusedAt < PRODUCER_REORDER_WAIT_MS / 2, 'at once, without waiting for predecessors')
  refusedAsGap = 0

  const handle = new DurableStream({ url: `${base}/v1/stream/pipelined`, contentType: 'application/json' })
  await handle.create()
  const producer = new IdempotentProducer(handle, 'writer', { lingerMs: 0, maxBatchBytes: 2048, maxInFlight: 8 })
  const MESSAGES = 3000
  for (let n = 0; n < MESSAGES; n++) producer.append(JSON.stringify({ n, pad: 'x'.repeat(80) }))
  await producer.flush()
  await producer.close()
  const all = await (await fetch(`${base}/v1/stream/pipelined`)).json() as Array<{ n: number }>
  t.same(all.map(message => message.n), Array.from({ length: MESSAGES }, (_, n) => n), 'every message once, in order')
  t.equal(refusedAsGap, 0, 'the server answered no 409')
})

test('app.close() answers a producer append still waiting for its predecessors at once (409), not after the wait', async (t) => {
  const { app, url: wsUrl } = await serve({ durable_streams: true })
  const base = wsUrl.replace('ws://', 'http://').replace(/\/$/, '')
  t.equal((await put(base, 'held', { 'content-type': 'application/json' })).status, 201)
  let arrived = false
  app.server.on('request', () => { arrived = true })
  const held = fetch(`${base}/v1/stream/held`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'producer-id': 'p', 'producer-epoch': '0', 'producer-seq': '3' },
    body: '[1]'
  })
  await waitFor(() => arrived, 'the append to reach the server')
  await new Promise(resolve => setTimeout(resolve, 50))
  const started = Date.now()
  await app.close()
  const closedIn = Date.now() - started
  const res = await held
  t.equal(res.status, 409, 'the held append is refused as a gap')
  t.equal((await res.json()).code, 'STREAMS_ERR_PRODUCER_SEQ_GAP')
  t.ok(closedIn < PRODUCER_REORDER_WAIT_MS / 2, `the app closed in ${closedIn} ms, without waiting out the ${PRODUCER_REORDER_WAIT_MS} ms`)
})

test('live readers woken by one append share one store read', async (t) => {
  const READERS = 100
  const adapter = createKvAdapter()
  await adapter.start()
  t.teardown(() => adapter.close())
  const { base, close } = await serveHttp({ adapter })
  t.teardown(close)
  t.equal((await put(base, 'shared')).status, 201)
  const store = await adapter.durableStreamStore!()
  const { hostname, port } = new URL(base)
  const agent = new Agent({ keepAlive: false, maxSockets: Infinity })
  t.teardown(() => agent.destroy())
  const texts: string[] = []
  const requests: ClientRequest[] = []
  // Half SSE, half long-poll, all waiting at the tail.
  await Promise.all(Array.from({ length: READERS }, (_, index) => new Promise<void>((resolve, reject) => {
    const sse = index % 2 === 0
    texts[index] = ''
    const req = httpRequest({ hostname, port, agent, path: `/v1/stream/shared?offset=-1&live=${sse ? 'sse' : 'long-poll'}` }, (res) => {
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => {
        texts[index] += chunk
        if (texts[index].includes('"upToDate":true')) resolve()
      })
    })
    req.on('error', reject)
    req.end()
    requests.push(req)
    if (!sse) setTimeout(resolve, 300)
  })))
  t.teardown(() => { for (const req of requests) req.destroy() })
  const read = store.read.bind(store)
  let reads = 0
  store.read = async (...args) => {
    reads++
    return read(...args)
  }
  t.teardown(() => { store.read = read })
  t.equal((await fetch(`${base}/v1/stream/shared`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'hello' })).status, 204)
  await waitFor(() => texts.every(text => text.includes('hello')), 'every reader got the append')
  t.ok(reads <= 2, `one read served ${READERS} waiting readers (${reads} reads)`)
})

test('appends made within one turn reach live SSE readers as one data event', async (t) => {
  const { app, url } = await serve({ durable_streams: true })
  t.teardown(() => app.close())
  const durable = app.streams.durable!
  await durable.create('turn', { contentType: 'application/json' })
  const { hostname, port } = new URL(url.replace('ws://', 'http://'))
  const texts = ['', '']
  const requests = texts.map((_, index) => httpRequest({ hostname, port, path: '/v1/stream/turn?offset=-1&live=sse' }, (res) => {
    res.setEncoding('utf8')
    res.on('data', (chunk: string) => { texts[index] += chunk })
  }).end())
  t.teardown(() => { for (const req of requests) req.destroy() })
  await waitFor(() => texts.every(text => text.includes('"upToDate":true')), 'both readers at the tail')
  texts.fill('')
  // One after another within one turn of the event loop: each wakes the readers before the next is made.
  for (const n of [1, 2, 3]) await durable.append('turn', { n })
  await waitFor(() => texts.every(text => text.includes('{"n":3}')), 'the appends reached both readers')
  for (const text of texts) {
    t.equal(text.split('event: data').length - 1, 1, 'one data event')
    t.match(text, /event: data\ndata:\[\{"n":1\},\{"n":2\},\{"n":3\}\]/, 'holding the three messages in order')
  }
})
