// Group feeds on the memory store: the Durable Streams read protocol as a client sees it (status codes,
// headers, message shapes), through plain fetch and through the official client + MaterializedState.
import { mkdtemp, rm } from 'node:fs/promises'
import { request as httpRequest } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify from 'fastify'
import t from 'tap'
import streams, { createKvAdapter } from '../../lib/index.js'
import { serve, until } from '../helpers/app.js'
import { byId, FeedReader, type FeedMessage } from './feeds-helpers.js'
import type { StreamsOptions } from '../../lib/index.js'

async function feedApp (options: StreamsOptions = {}) {
  const served = await serve({ feeds: true, ...options })
  t.teardown(() => served.app.close())
  const base = `${served.url.replace('ws:', 'http:')}v1/groups`
  return { app: served.app, base }
}

/** Opens an SSE reader and closes it at once: 200 when a live slot was free, 503 when not. */
async function liveStatus (url: string): Promise<number> {
  const controller = new AbortController()
  const response = await fetch(`${url}?offset=now&live=sse`, { signal: controller.signal })
  controller.abort()
  return response.status
}

async function body (response: Response): Promise<FeedMessage[]> {
  return await response.json() as FeedMessage[]
}

t.test('offset -1 answers a snapshot in group order whose next offset is the tail; the tail continues it', async t => {
  const { app, base } = await feedApp()
  await app.streams.set('todo', 'ana', 'b', { id: 'b', title: 'second' })
  await app.streams.set('todo', 'ana', 'a', { id: 'a', title: 'first' })
  await app.streams.set('todo', 'ana', 'b', { id: 'b', title: 'second, edited' })

  const response = await fetch(`${base}/todo/ana?offset=-1`)
  t.equal(response.status, 200)
  t.match(response.headers.get('content-type'), /^application\/json/)
  t.equal(response.headers.get('stream-up-to-date'), 'true')
  t.equal(response.headers.get('x-content-type-options'), 'nosniff')
  t.equal(response.headers.get('cross-origin-resource-policy'), 'cross-origin')
  t.ok(response.headers.get('etag'))
  const next = response.headers.get('stream-next-offset')!
  const messages = await body(response)
  t.same(messages.map(m => m.headers.control ?? `${m.headers.operation}:${m.key}`), ['snapshot-start', 'insert:b', 'insert:a', 'snapshot-end'])
  t.same(messages[1].value, { id: 'b', title: 'second, edited' })
  t.equal(messages[3].headers.offset, next)

  const head = await fetch(`${base}/todo/ana`, { method: 'HEAD' })
  t.equal(head.status, 200)
  t.equal(head.headers.get('stream-next-offset'), next, 'HEAD gives the same tail')
  t.equal(head.headers.get('cache-control'), 'no-store')

  const tail = await fetch(`${base}/todo/ana?offset=${next}`)
  t.same(await body(tail), [], 'nothing after the snapshot yet')
  t.match(tail.headers.get('cache-control'), /^public/, 'without an auth function an offset read may be cached')
  t.equal(tail.headers.get('stream-next-offset'), next)
  t.equal(tail.headers.get('stream-up-to-date'), 'true')

  await app.streams.delete('todo', 'ana', 'a')
  const after = await body(await fetch(`${base}/todo/ana?offset=${next}`))
  t.same(after.map(m => [m.headers.operation, m.key, m.value, m.old_value]), [['delete', 'a', null, { id: 'a', title: 'first' }]])
  t.ok(Date.parse(after[0].headers.timestamp!) > 0, 'a change carries its own timestamp')
})

t.test('an empty or unknown group is a feed like any other', async t => {
  const { base } = await feedApp()
  const response = await fetch(`${base}/todo/nobody`)
  t.equal(response.status, 200)
  t.same((await body(response)).map(m => m.headers.control), ['snapshot-start', 'snapshot-end'])
})

t.test('operations: create is insert, update is update, update() on a missing item is insert; custom events are `event` messages', async t => {
  const { app, base } = await feedApp()
  const start = (await fetch(`${base}/todo/ana?offset=now`)).headers.get('stream-next-offset')!
  await app.streams.set('todo', 'ana', 'a', { id: 'a', n: 1 })
  await app.streams.set('todo', 'ana', 'a', { id: 'a', n: 2 })
  await app.streams.update('todo', 'ana', 'b', [{ type: 'set', path: 'n', value: 3 }])
  await app.streams.send('todo', 'ana', { type: 'ping', data: { at: 1 } })
  await app.streams.send('todo', 'ana', { type: 'poke', data: 2 }, 'a')
  const messages = await body(await fetch(`${base}/todo/ana?offset=${start}`))
  t.same(messages.map(m => [m.headers.operation, m.key]), [['insert', 'a'], ['update', 'a'], ['insert', 'b'], ['event', undefined], ['event', 'a']])
  t.same(messages[3].event, { type: 'ping', data: { at: 1 } })
  t.same(messages[4].event, { type: 'poke', data: 2 })
  const stamps = messages.map(m => Date.parse(m.headers.timestamp!))
  t.ok(stamps.every((stamp, i) => i === 0 || stamp > stamps[i - 1]), 'timestamps increase')

  // MaterializedState takes every message, custom events included, and ends equal to getGroup.
  const reader = new FeedReader(`${base}/todo/ana`, false)
  await reader.start()
  await until(() => reader.offsets.length > 0, 'the snapshot')
  const state = new FeedReader(`${base}/todo/ana`, false)
  state.offset = start
  await state.start()
  await until(() => state.messages.length === 5, 'the changes')
  t.same(reader.items('todo'), byId(await app.streams.getGroup('todo', 'ana')))
  t.same(state.items('todo'), byId(await app.streams.getGroup('todo', 'ana')))
})

t.test('offset now, paging with limit, ETag and 304', async t => {
  const { app, base } = await feedApp()
  const now = await fetch(`${base}/todo/ana?offset=now`)
  t.equal(now.status, 200)
  t.same(await body(now), [])
  t.equal(now.headers.get('stream-up-to-date'), 'true')
  t.equal(now.headers.get('etag'), null, 'no ETag for offset=now')
  let offset = now.headers.get('stream-next-offset')!
  for (let n = 0; n < 5; n++) await app.streams.set('todo', 'ana', `i${n}`, { id: `i${n}`, n })

  const seen: number[] = []
  const upToDate: boolean[] = []
  for (let pages = 0; pages < 10; pages++) {
    const page = await fetch(`${base}/todo/ana?offset=${offset}&limit=2`)
    const messages = await body(page)
    seen.push(...messages.map(m => (m.value as { n: number }).n))
    upToDate.push(page.headers.get('stream-up-to-date') === 'true')
    offset = page.headers.get('stream-next-offset')!
    if (upToDate[upToDate.length - 1]) break
  }
  t.same(seen, [0, 1, 2, 3, 4])
  t.same(upToDate, [false, false, true], 'only the last page is up to date')

  const huge = await fetch(`${base}/todo/ana?offset=${now.headers.get('stream-next-offset')}&limit=99999999999999999999999`)
  t.equal(huge.status, 200, 'a huge limit is capped, not refused')
  t.equal((await body(huge)).length, 5)

  const first = await fetch(`${base}/todo/ana?offset=-1`)
  const etag = first.headers.get('etag')!
  await first.arrayBuffer()
  const again = await fetch(`${base}/todo/ana?offset=-1`, { headers: { 'if-none-match': etag } })
  t.equal(again.status, 304)
  await app.streams.set('todo', 'ana', 'x', { id: 'x' })
  const changed = await fetch(`${base}/todo/ana?offset=-1`, { headers: { 'if-none-match': etag } })
  t.equal(changed.status, 200, 'a changed group is sent again')
})

t.test('long-poll waits for a change, answers 204 on time-out; SSE streams changes', async t => {
  const { app, base } = await feedApp({ feeds: { long_poll_timeout_ms: 300 } })
  const tail = (await fetch(`${base}/todo/ana?offset=now`)).headers.get('stream-next-offset')!

  const timedOut = await fetch(`${base}/todo/ana?offset=${tail}&live=long-poll`)
  t.equal(timedOut.status, 204)
  t.equal(timedOut.headers.get('stream-next-offset'), tail)
  t.equal(timedOut.headers.get('stream-up-to-date'), 'true')
  t.ok(timedOut.headers.get('stream-cursor'))

  const waiting = fetch(`${base}/todo/ana?offset=${tail}&live=long-poll`)
  const nowWaiting = fetch(`${base}/todo/ana?offset=now&live=long-poll`)
  await until(async () => { await app.streams.set('todo', 'ana', 'a', { id: 'a' }); return true }, 'a write')
  const woke = await waiting
  t.equal(woke.status, 200)
  t.same((await body(woke)).map(m => m.key), ['a'])
  t.ok(woke.headers.get('stream-cursor'))
  const fromNow = await nowWaiting
  t.ok([200, 204].includes(fromNow.status), 'offset=now with long-poll waits from the tail')

  const cursor = woke.headers.get('stream-cursor')!
  const echoed = await fetch(`${base}/todo/ana?offset=${woke.headers.get('stream-next-offset')}&live=long-poll&cursor=${Number(cursor) + 10}`)
  t.ok(Number(echoed.headers.get('stream-cursor')) > Number(cursor) + 10, 'a cursor never goes back')

  const reader = new FeedReader(`${base}/todo/ana`, 'sse')
  await reader.start()
  await until(() => reader.items('todo').size === 1, 'the snapshot over SSE')
  await app.streams.set('todo', 'ana', 'b', { id: 'b' })
  await app.streams.send('todo', 'ana', { type: 'marker', data: null })
  await until(() => reader.events().length === 1, 'the marker')
  t.same([...reader.items('todo').keys()], ['a', 'b'])
  await reader.stop()
})

t.test('changes committed in one turn reach a live SSE reader as one data event and one control event', async t => {
  const { app, base } = await feedApp()
  const url = `${base}/todo/burst`
  const tail = (await fetch(`${url}?offset=now`)).headers.get('stream-next-offset')!
  const controller = new AbortController()
  t.teardown(() => controller.abort())
  const response = await fetch(`${url}?offset=${tail}&live=sse`, { signal: controller.signal })
  const chunks = response.body!.pipeThrough(new TextDecoderStream()).getReader()
  let text = ''
  const readUntil = async (done: () => boolean) => {
    while (!done()) text += (await chunks.read()).value ?? ''
  }
  await readUntil(() => text.includes('event: control'))
  text = ''
  // The official client on the same feed: it takes a data event holding several messages.
  const client = new FeedReader(url, 'sse')
  await client.start()
  await until(() => client.offset !== '-1', 'the client\'s snapshot')

  await Promise.all(['a', 'b', 'c'].map(async id => await app.streams.set('todo', 'burst', id, { id })))
  const next = (await fetch(url, { method: 'HEAD' })).headers.get('stream-next-offset')!
  t.not(next, tail)
  await readUntil(() => text.includes(`"streamNextOffset":"${next}"`))
  t.equal(text.split('event: data').length - 1, 1, 'one data event')
  t.equal(text.split('event: control').length - 1, 1, 'one control event')
  const data = /event: data\ndata: ?(.*)\n\n/.exec(text)![1]
  t.same((JSON.parse(data) as FeedMessage[]).map(m => [m.key, m.headers.operation]), [['a', 'insert'], ['b', 'insert'], ['c', 'insert']])

  await until(() => client.items('todo').size === 3, 'the burst in the client')
  t.same(client.tail.map(m => m.key), ['a', 'b', 'c'], 'each change once, in order')
  t.equal(client.offset, next)
  await client.stop()
})

t.test('bad input gets a clean coded refusal', async t => {
  const { base } = await feedApp()
  const cases: Array<[string, number, string]> = [
    ['/todo/ana?offset=banana', 400, 'STREAMS_ERR_FEED_REQUEST'],
    ['/todo/ana?offset=-2', 400, 'STREAMS_ERR_FEED_REQUEST'],
    [`/todo/ana?offset=${'9'.repeat(17)}_abc`, 400, 'STREAMS_ERR_FEED_REQUEST'],
    ['/todo/ana?offset=-1&offset=now', 400, 'STREAMS_ERR_FEED_REQUEST'],
    ['/todo/ana?live=forever', 400, 'STREAMS_ERR_FEED_REQUEST'],
    ['/todo/ana?limit=0', 400, 'STREAMS_ERR_FEED_REQUEST'],
    ['/todo/ana?limit=-5', 400, 'STREAMS_ERR_FEED_REQUEST'],
    ['/bad:stream/ana', 400, 'STREAMS_ERR_INVALID_NAME'],
    ['/todo/__proto__', 400, 'STREAMS_ERR_INVALID_NAME']
  ]
  for (const [path, status, code] of cases) {
    const response = await fetch(base + path)
    t.equal(response.status, status, path)
    t.equal(((await response.json()) as { code: string }).code, code, path)
  }
  const unknown = await fetch(`${base}/todo/ana?offset=-1&flavour=vanilla&token=abc`)
  t.equal(unknown.status, 200, 'unknown query parameters are ignored')

  for (const method of ['POST', 'PUT', 'PATCH', 'DELETE']) {
    const response = await fetch(`${base}/todo/ana`, method === 'DELETE' ? { method } : { method, body: '[{"x":1}]', headers: { 'content-type': 'application/json' } })
    t.equal(response.status, 405, method)
    t.equal(response.headers.get('allow'), 'GET, HEAD, OPTIONS')
    t.equal(((await response.json()) as { code: string }).code, 'STREAMS_ERR_METHOD_NOT_ALLOWED')
  }
  const preflight = await fetch(`${base}/todo/ana`, { method: 'OPTIONS', headers: { origin: 'http://elsewhere.test', 'access-control-request-method': 'GET' } })
  t.equal(preflight.status, 204)
  t.match(preflight.headers.get('access-control-allow-methods'), /GET/)
})

t.test('410 for an offset from the future, another epoch, or a trimmed log; -1 recovers', async t => {
  const { app, base } = await feedApp()
  await app.streams.set('todo', 'ana', 'a', { id: 'a' })
  const tail = (await fetch(`${base}/todo/ana?offset=now`)).headers.get('stream-next-offset')!
  const [rev, epoch] = tail.split('_')
  const future = `${String(Number(rev) + 5).padStart(16, '0')}_${epoch}`
  const other = `${rev}_0123456789abcdef`
  for (const offset of [future, other]) {
    for (const live of ['', '&live=long-poll', '&live=sse']) {
      const response = await fetch(`${base}/todo/ana?offset=${offset}${live}`)
      t.equal(response.status, 410, `${offset}${live}`)
      t.equal(((await response.json()) as { code: string }).code, 'STREAMS_ERR_OFFSET_GONE')
    }
  }

  const reader = new FeedReader(`${base}/todo/ana`, 'long-poll')
  await reader.start()
  await until(() => reader.items('todo').size === 1, 'the snapshot')
  await reader.stop()
  // Far more changes than the log keeps while the reader is away.
  for (let n = 0; n < 1300; n++) await app.streams.set('todo', 'ana', `i${n % 50}`, { id: `i${n % 50}`, n })
  await reader.start()
  await until(() => reader.failures.length === 1, 'the 410')
  t.same(reader.failures, [410])
  reader.offset = '-1'
  await reader.start()
  await until(() => reader.items('todo').size === 51, 'the recovery')
  t.same(reader.items('todo'), byId(await app.streams.getGroup('todo', 'ana')))
  await reader.stop()
})

t.test('a memory store restart answers 410 to old offsets; -1 recovers', async t => {
  const first = await serve({ feeds: true })
  await first.app.streams.set('todo', 'ana', 'a', { id: 'a' })
  const offset = (await fetch(`${first.url.replace('ws:', 'http:')}v1/groups/todo/ana?offset=now`)).headers.get('stream-next-offset')!
  await first.app.close()
  const { app, base } = await feedApp()
  await app.streams.set('todo', 'ana', 'a', { id: 'a' })
  const stale = await fetch(`${base}/todo/ana?offset=${offset}`)
  t.equal(stale.status, 410)
  const fresh = await fetch(`${base}/todo/ana?offset=-1`)
  t.equal(fresh.status, 200)
})

t.test('auth and join triggers: 401 and 403 look the same for every group and mode; inputs as documented', async t => {
  const authInputs: any[] = []
  const joinInputs: any[] = []
  const { app, base } = await feedApp({
    auth_function: async (input) => {
      authInputs.push(input)
      const token = input.headers.authorization ?? input.query_params.token?.[0]
      if (token === undefined) throw new Error('no token')
      return { context: { user: token.replace('Bearer ', '') } }
    }
  })
  app.streams.registerFunction({
    function_path: 'test.join',
    handler: async (input: any) => {
      joinInputs.push(input)
      return input.context.user === input.group_id ? {} : { unauthorized: true }
    }
  })
  app.streams.registerTrigger({ trigger_type: 'streams:join', function_path: 'test.join' })
  await app.streams.set('todo', 'ana', 'a', { id: 'a', secret: true })

  const answers = new Set<string>()
  for (const group of ['ana', 'nobody']) {
    for (const mode of ['offset=-1', 'offset=-1&live=long-poll', 'offset=-1&live=sse', 'offset=now']) {
      const anonymous = await fetch(`${base}/todo/${group}?${mode}`)
      t.equal(anonymous.status, 401, `anonymous ${group}${mode}`)
      answers.add(`401 ${anonymous.headers.get('cache-control')} ${await anonymous.text()}`)
      const bob = await fetch(`${base}/todo/${group}?${mode}`, { headers: { authorization: 'Bearer bob' } })
      t.equal(bob.status, 403, `bob on ${group}${mode}`)
      answers.add(`403 ${bob.headers.get('cache-control')} ${await bob.text()}`)
    }
    t.equal((await fetch(`${base}/todo/${group}`, { method: 'HEAD' })).status, 401)
    t.equal((await fetch(`${base}/todo/${group}`, { method: 'HEAD', headers: { authorization: 'Bearer bob' } })).status, 403)
  }
  t.equal(answers.size, 2, 'one 401 and one 403 answer whatever the group and mode')

  const ana = await fetch(`${base}/todo/ana?token=ana&offset=-1`)
  t.equal(ana.status, 200, 'a token as a query parameter')
  t.notMatch(ana.headers.get('cache-control'), /public/, 'an authenticated read is never publicly cacheable')
  t.equal((await body(ana)).length, 3)

  const input = authInputs[authInputs.length - 1]
  t.equal(input.path, '/v1/groups/todo/ana')
  t.same(input.query_params.token, ['ana'])
  t.match(input.addr, /^127\.0\.0\.1:\d+$/)
  t.type(input.headers, 'object')
  const joins = joinInputs.slice(-2)
  t.same(Object.keys(joins[1]).sort(), ['context', 'group_id', 'id', 'stream_name', 'subscription_id'])
  t.match(joins[1], { stream_name: 'todo', group_id: 'ana', id: null, context: { user: 'ana' } })
  t.not(joins[0].subscription_id, joins[1].subscription_id, 'one subscription id per request')

  // auth_failure 'anonymous': a refused auth reads with context null, and the join trigger decides.
  const anonymousApp = await feedApp({ auth_function: async () => { throw new Error('no') }, auth_failure: 'anonymous' })
  anonymousApp.app.streams.registerFunction({ function_path: 'test.join', handler: async (input: any) => input.context === null ? {} : { unauthorized: true } })
  anonymousApp.app.streams.registerTrigger({ trigger_type: 'streams:join', function_path: 'test.join' })
  t.equal((await fetch(`${anonymousApp.base}/todo/ana`)).status, 200, 'anonymous reader let in by the join trigger')

  // With SSE through the official client, the token as a header.
  const reader = new FeedReader(`${base}/todo/ana`, 'sse', { authorization: 'Bearer ana' })
  await reader.start()
  await until(() => reader.items('todo').size === 1, 'the authorised snapshot')
  await reader.stop()
})

t.test('limits: bounded live readers (503, Retry-After), nothing else affected; SSE byte cap; app.close() ends feeds', async t => {
  const { app, base } = await feedApp({ feeds: { max_live_readers: 1 }, max_buffered_bytes: 64 * 1024 })
  const tail = (await fetch(`${base}/todo/ana?offset=now`)).headers.get('stream-next-offset')!

  // A reader that never reads its SSE response: it holds the only live slot until the byte cap drops it.
  const stalled = await new Promise<import('node:http').IncomingMessage>((resolve, reject) => {
    const req = httpRequest(`${base}/todo/ana?offset=${tail}&live=sse`, resolve)
    req.on('error', reject)
    req.end()
  })
  t.equal(stalled.statusCode, 200)
  t.match(stalled.headers['content-type'], /^text\/event-stream/)
  stalled.pause()
  stalled.socket.pause()
  let stalledClosed = false
  stalled.socket.on('close', () => { stalledClosed = true })

  const refused = await fetch(`${base}/todo/ana?offset=${tail}&live=long-poll`)
  t.equal(refused.status, 503)
  t.equal(refused.headers.get('retry-after'), '5')
  t.equal(((await refused.json()) as { code: string }).code, 'STREAMS_ERR_FEED_BUSY')
  t.equal((await fetch(`${base}/todo/ana?offset=-1`)).status, 200, 'catch-up reads are not limited')

  const big = 'x'.repeat(16 * 1024)
  let n = 0
  await until(async () => {
    await app.streams.set('todo', 'ana', `big${n % 10}`, { id: `big${n % 10}`, big, n: n++ })
    return (await liveStatus(`${base}/todo/ana`)) === 200
  }, 'the stalled reader dropped', 60_000)
  t.pass('the stalled SSE reader was dropped, its slot is free')
  stalled.socket.resume()
  stalled.resume()
  await until(() => stalledClosed, 'its connection closed')

  // app.close() answers an open long-poll and ends an open SSE response without waiting for their timers.
  const closingApp = await feedApp({ feeds: { long_poll_timeout_ms: 600_000, sse_max_duration_ms: 600_000, max_live_readers: 2 } })
  const closingTail = (await fetch(`${closingApp.base}/todo/ana?offset=now`)).headers.get('stream-next-offset')!
  const poll = fetch(`${closingApp.base}/todo/ana?offset=${closingTail}&live=long-poll`)
  const sse = await fetch(`${closingApp.base}/todo/ana?offset=${closingTail}&live=sse`)
  const sseText = sse.text()
  await until(async () => (await liveStatus(`${closingApp.base}/todo/ana`)) === 503, 'both readers waiting')
  await closingApp.app.close()
  t.equal((await poll).status, 204, 'the long-poll is answered')
  t.match(await sseText, /event: control/, 'the SSE response ended')
})

t.test('the feeds option is checked', async t => {
  const { normalizeOptions, DEFAULT_FEEDS_PATH, DEFAULT_FEEDS_LONG_POLL_TIMEOUT_MS } = await import('../../lib/options.js')
  t.equal(normalizeOptions({}).feeds, null)
  t.equal(normalizeOptions({ feeds: false }).feeds, null)
  t.match(normalizeOptions({ feeds: true }).feeds, { path: DEFAULT_FEEDS_PATH, longPollTimeoutMs: DEFAULT_FEEDS_LONG_POLL_TIMEOUT_MS })
  t.match(normalizeOptions({ feeds: { path: '/feeds', longPollTimeoutMs: 5 } }).feeds, { path: '/feeds', longPollTimeoutMs: 5 })
  t.match(normalizeOptions({ feeds: { long_poll_timeout_ms: 7, max_live_readers: 3 } }).feeds, { longPollTimeoutMs: 7, maxLiveReaders: 3 })
  for (const bad of ['yes', { path: 'feeds' }, { path: '/feeds/' }, { path: '/a/:b' }, { long_poll_timeout_ms: 0 }, { retention: 5 }, { maxPageChanges: 1.5 }]) {
    t.throws(() => normalizeOptions({ feeds: bad as never }), { code: 'STREAMS_ERR_INVALID_OPTION' }, JSON.stringify(bad))
  }
})

t.test('snapshot inserts carry the timestamp of each item\'s last change (memory and SQLite)', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'streams-feeds-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const stores = { memory: {}, sqlite: { store_method: 'file_based' as const, file_path: join(dir, 'store.db') } }
  for (const [name, config] of Object.entries(stores)) {
    const { app, base } = await feedApp({ adapter: { class: 'kv', config } })
    const start = (await fetch(`${base}/todo/ana?offset=now`)).headers.get('stream-next-offset')!
    await app.streams.set('todo', 'ana', 'a', { id: 'a', n: 1 })
    await app.streams.set('todo', 'ana', 'b', { id: 'b' })
    await app.streams.update('todo', 'ana', 'a', [{ type: 'set', path: 'n', value: 2 }])
    await app.streams.send('todo', 'ana', { type: 'seen', data: null }, 'b')
    const changes = await body(await fetch(`${base}/todo/ana?offset=${start}`))
    const lastChange = (key: string) => changes.filter(m => m.key === key && m.headers.operation !== 'event').at(-1)!.headers.timestamp
    const snapshot = await body(await fetch(`${base}/todo/ana?offset=-1`))
    const inserts = snapshot.filter(m => m.headers.operation === 'insert')
    t.same(inserts.map(m => [m.key, m.headers.timestamp]), [['a', lastChange('a')], ['b', lastChange('b')]], name)
    t.ok(Date.parse(lastChange('a')!) > Date.parse(lastChange('b')!), `${name}: the update's time, not the insert's`)
  }
})

t.test('readers back at one offset share one read of the log (SQLite): a reconnect storm reads it once, not once per reader', async t => {
  const READERS = 100
  const dir = await mkdtemp(join(tmpdir(), 'streams-feeds-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const adapter = createKvAdapter({ store_method: 'file_based', file_path: join(dir, 'store.db') })
  await adapter.start()
  t.teardown(() => adapter.close())
  const readChanges = adapter.readChanges.bind(adapter)
  let reads = 0
  adapter.readChanges = async (...args) => {
    reads++
    return await readChanges(...args)
  }
  const { app, base } = await feedApp({ adapter })
  const url = `${base}/todo/storm`
  const from = (await fetch(`${url}?offset=now`)).headers.get('stream-next-offset')!
  await Promise.all(Array.from({ length: 50 }, async (_, n) => await app.streams.set('todo', 'storm', `item-${n}`, { id: `item-${n}`, n })))
  reads = 0
  const { hostname, port } = new URL(base)
  // Every reader comes back at once from the same offset, half over SSE, half as plain catch-up reads.
  const texts = await Promise.all(Array.from({ length: READERS }, (_, index) => new Promise<string>((resolve, reject) => {
    const sse = index % 2 === 0
    let text = ''
    const req = httpRequest({ hostname, port, path: `/v1/groups/todo/storm?offset=${from}${sse ? '&live=sse' : ''}` }, (res) => {
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => {
        text += chunk
        if (sse && text.includes('"upToDate":true')) {
          req.destroy()
          resolve(text)
        }
      })
      res.on('end', () => resolve(text))
    })
    req.on('error', reject)
    req.end()
  })))
  t.ok(texts.every(text => text.includes('"key":"item-0"') && text.includes('"key":"item-49"')), 'every reader got all 50 changes')
  t.ok(reads <= READERS / 2, `${READERS} readers, ${reads} reads of the log`)
  const next = (await fetch(`${url}?offset=now`)).headers.get('stream-next-offset')!
  await app.streams.set('todo', 'storm', 'late', { id: 'late' })
  const after = await body(await fetch(`${url}?offset=${next}`))
  t.same(after.map(m => m.key), ['late'], 'a read asked for after a change is not served by an older one')
})

t.test('feeds.retention is set on the adapter the plugin builds: an offset older than it keeps answers 410', async t => {
  const { app, base } = await feedApp({ feeds: { retention: { max_changes: 5 } } })
  await app.streams.set('todo', 'ana', 'a', { id: 'a' })
  const old = (await fetch(`${base}/todo/ana?offset=now`)).headers.get('stream-next-offset')!
  for (let n = 0; n < 20; n++) await app.streams.set('todo', 'ana', 'a', { id: 'a', n })
  const gone = await fetch(`${base}/todo/ana?offset=${old}`)
  t.equal(gone.status, 410, 'the log keeps only the newest 5 (and its trim slack)')
  t.equal(((await gone.json()) as { code: string }).code, 'STREAMS_ERR_OFFSET_GONE')
  const snapshot = await fetch(`${base}/todo/ana?offset=-1`)
  await snapshot.arrayBuffer()
  await app.streams.set('todo', 'ana', 'a', { id: 'a', n: 'last' })
  const recent = await fetch(`${base}/todo/ana?offset=${snapshot.headers.get('stream-next-offset')!}`)
  t.equal(recent.status, 200, 'a recent offset reads on')
})

t.test('feeds.retention is checked: snake or camel case, one place only, a borrowed adapter keeps its own', async t => {
  const { normalizeOptions } = await import('../../lib/options.js')
  const { createKvAdapter } = await import('../../lib/adapters/kv.js')
  const { DEFAULT_CHANGE_LOG_MAX_AGE_MS, DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES } = await import('../../lib/adapters/adapter.js')
  const changeLogOf = (options: Record<string, unknown>) => (normalizeOptions(options).adapter as { config: { changeLog: unknown } }).config.changeLog
  t.same(changeLogOf({ feeds: { retention: { max_changes: 5 } } }), { maxChanges: 5, maxAgeMs: DEFAULT_CHANGE_LOG_MAX_AGE_MS })
  t.same(changeLogOf({ feeds: { retention: { maxAgeMs: 60_000 } }, adapter: { class: 'redis' } }), { maxChanges: DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES, maxAgeMs: 60_000 })
  t.same(changeLogOf({ feeds: { retention: { max_age_ms: 9 } }, adapter: { class: 'kv', config: { change_log: { max_age_ms: 9, max_changes: 3 } } } }),
    { maxChanges: 3, maxAgeMs: 9 }, 'given in both places, the same: accepted')
  const bad = [
    { feeds: { retention: { max_changes: -1 } } },
    { feeds: { retention: { max_age_ms: 0 } } },
    { feeds: { retention: { size: 1 } } },
    { feeds: { retention: { max_changes: 5 } }, adapter: { class: 'kv', config: { change_log: { max_changes: 6 } } } },
    { feeds: { retention: { max_changes: 5 } }, adapter: { class: 'mine' }, adapters: { mine: () => ({}) } }
  ]
  for (const options of bad) t.throws(() => normalizeOptions(options), { code: 'STREAMS_ERR_INVALID_OPTION' }, JSON.stringify(options))

  const borrowed = createKvAdapter({ change_log: { max_changes: 7 } })
  t.teardown(() => borrowed.close())
  const refused = Fastify()
  await t.rejects(async () => { await refused.register(streams, { adapter: borrowed, feeds: { retention: { max_changes: 8 } } }).ready() }, { code: 'STREAMS_ERR_INVALID_OPTION' }, 'a borrowed adapter with another retention is refused at start')
  await refused.close()
  const accepted = Fastify()
  await accepted.register(streams, { adapter: borrowed, feeds: { retention: { max_changes: 7 } } }).ready()
  await accepted.close()
  t.pass('the same retention restated is accepted')
})
