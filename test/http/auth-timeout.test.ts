// auth_timeout_ms bounds the auth function on the HTTP routes as on the socket handshake: a request whose auth
// function never settles gets 503 STREAMS_ERR_AUTH_TIMEOUT past the deadline, and holds nothing afterwards.
import t from 'tap'
import { serve } from '../helpers/app.js'

const TIMEOUT_MS = 100

/** An app whose auth function never settles for requests carrying `x-hang`, and accepts the others. */
async function hangingAuthApp () {
  const served = await serve({
    feeds: { max_live_readers: 1 },
    durable_streams: { max_live_readers: 1 },
    auth_timeout_ms: TIMEOUT_MS,
    auth_function: async (input) => input.headers['x-hang'] === undefined ? { context: { user: 'ana' } } : await new Promise(() => {})
  })
  t.teardown(() => served.app.close())
  return { app: served.app, base: served.url.replace('ws:', 'http:').slice(0, -1) }
}

t.test('a group feed request whose auth function never settles gets 503 past auth_timeout_ms, and takes no live slot', async t => {
  const { app, base } = await hangingAuthApp()
  await app.streams.set('todo', 'ana', 'a', { title: 'first' })
  const started = Date.now()
  const hung = await fetch(`${base}/v1/groups/todo/ana?offset=now&live=long-poll`, { headers: { 'x-hang': '1' } })
  t.equal(hung.status, 503)
  t.equal((await hung.json() as { code: string }).code, 'STREAMS_ERR_AUTH_TIMEOUT')
  t.ok(Date.now() - started >= TIMEOUT_MS - 10, 'answered once the deadline passed')
  // The one live slot is free: an accepted reader gets it.
  const controller = new AbortController()
  const live = await fetch(`${base}/v1/groups/todo/ana?offset=now&live=sse`, { signal: controller.signal })
  t.equal(live.status, 200)
  controller.abort()
})

t.test('a durable stream request whose auth function never settles gets 503 past auth_timeout_ms, for every method', async t => {
  const { base } = await hangingAuthApp()
  const url = `${base}/v1/stream/jobs`
  t.equal((await fetch(url, { method: 'PUT', headers: { 'content-type': 'text/plain' } })).status, 201)
  for (const [method, body] of [['PUT', undefined], ['POST', 'data'], ['GET', undefined], ['DELETE', undefined]] as const) {
    const started = Date.now()
    const hung = await fetch(`${url}${method === 'GET' ? '?offset=-1&live=long-poll' : ''}`, { method, body, headers: { 'x-hang': '1', 'content-type': 'text/plain' }, signal: AbortSignal.timeout(5000) })
    t.equal(hung.status, 503, `${method}: 503`)
    t.equal((await hung.json() as { code: string }).code, 'STREAMS_ERR_AUTH_TIMEOUT', `${method}: the auth time-out's code`)
    t.ok(Date.now() - started >= TIMEOUT_MS - 10, `${method}: answered once the deadline passed`)
  }
  // Nothing of the refused requests stayed: the stream is there, empty, and the one live slot is free.
  const read = await fetch(`${url}?offset=-1`)
  t.equal(read.status, 200)
  t.equal(await read.text(), '')
  const controller = new AbortController()
  const live = await fetch(`${url}?offset=-1&live=sse`, { signal: controller.signal })
  t.equal(live.status, 200)
  controller.abort()
})
