// Redis faults with a real redis-server: stopped under traffic, writes and reads fail fast with a code and the
// stream sockets stay open; restarted, every open subscription gets a fresh sync and new writes flow again.
// A dead Redis at start fails `register` with a code within a bounded time.
import t from 'tap'
import Fastify from 'fastify'
import { Stream } from '@motiadev/stream-client-node'
import streams from '../../lib/index.js'
import { RawClient, serve, until, type Served } from '../helpers/app.js'
import { startRedisServer, type RedisServer } from '../helpers/redis-server.js'
import { freePort } from '../helpers/wait.js'

const REDIS = 'modules::streams::adapters::RedisAdapter'
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

type Item = { id: string, [key: string]: unknown }

/** Items keyed by id, values as JSON text: group states compared as sets. */
function byId (items: unknown[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (const item of items as Item[]) out[item.id] = JSON.stringify(item)
  return out
}

function same (a: unknown[], b: unknown[]): boolean {
  return JSON.stringify(Object.entries(byId(a)).sort()) === JSON.stringify(Object.entries(byId(b)).sort())
}

async function openStream (url: string): Promise<Stream> {
  const stream = new Stream(url)
  // The stock client joins on open; close() before open would throw inside ws.
  await until(() => (stream as unknown as { ws: { isOpen(): boolean } }).ws.isOpen(), 'the stock client to connect')
  return stream
}

t.test('redis-server stopped under traffic, then restarted', async t => {
  const redis: RedisServer = await startRedisServer()
  t.teardown(() => redis.close())
  const served: Served = await serve({ adapter: { class: REDIS, config: { redis_url: redis.url, connect_timeout_ms: 1000, command_timeout_ms: 1000 } } })
  const { app, url } = served
  t.teardown(() => app.close())

  for (let i = 0; i < 5; i++) await app.streams.set('fault', 'g', `k${i}`, { n: 0 })

  const raw = await RawClient.open(url)
  t.teardown(() => raw.close())
  raw.join('fault', 'g')
  raw.join('fault', 'g', 'k1')
  const stock = await openStream(url)
  t.teardown(() => stock.close())
  const group = stock.subscribeGroup('fault', 'g')
  const item = stock.subscribeItem('fault', 'g', 'k1')
  await until(() => raw.of('sync').length === 2, 'the raw syncs')

  // Traffic: one writer loop, every 5 ms, recording what failed and how.
  const traffic = { writing: true }
  let n = 0
  const failures: Array<{ code: unknown, ms: number }> = []
  const writer = (async () => {
    while (traffic.writing) {
      const started = Date.now()
      try {
        await app.streams.set('fault', 'g', `k${n % 5}`, { n: ++n })
      } catch (err) {
        failures.push({ code: (err as { code?: unknown }).code, ms: Date.now() - started })
      }
      await sleep(5)
    }
  })()
  t.teardown(async () => { traffic.writing = false; await writer })

  await until(async () => n > 20 && same(group.getState() as unknown[], await app.streams.getGroup('fault', 'g')), 'subscribers to follow the writer')
  const connections = app.streams.connectionCount
  t.equal(connections, 2, 'two stream sockets open')

  await redis.stop()

  // Writes and reads fail fast with the coded error.
  let started = Date.now()
  const setError = await app.streams.set('fault', 'g', 'down', { n: -1 }).then(() => null, (err: unknown) => err)
  t.match(setError, { code: 'STREAMS_ERR_BACKEND_UNAVAILABLE' }, 'set fails with STREAMS_ERR_BACKEND_UNAVAILABLE')
  t.ok(Date.now() - started < 3000, `set failed within 3 s (${Date.now() - started} ms)`)
  started = Date.now()
  await t.rejects(app.streams.get('fault', 'g', 'k1'), { code: 'STREAMS_ERR_BACKEND_UNAVAILABLE' }, 'get fails with the coded error')
  await t.rejects(app.streams.getGroup('fault', 'g'), { code: 'STREAMS_ERR_BACKEND_UNAVAILABLE' }, 'getGroup fails with the coded error')
  t.ok(Date.now() - started < 6000, 'reads failed within their bound')

  // Redis stays down a while under traffic; the writer's failures are all coded and fast.
  const before = failures.length
  await until(() => failures.length >= before + 5, 'the writer to keep failing', 10_000)
  t.ok(failures.every(f => f.code === 'STREAMS_ERR_BACKEND_UNAVAILABLE'), 'every failed write has the coded error')
  t.ok(failures.every(f => f.ms < 3000), `every failed write failed within 3 s (max ${Math.max(...failures.map(f => f.ms))} ms)`)
  t.equal(raw.closeCode, null, 'the raw socket is still open')
  t.equal(app.streams.connectionCount, connections, 'no stream socket was dropped')

  // The writer pauses while Redis comes back, so the re-sync is read before any new write: Redis is back
  // empty (this redis-server keeps nothing on disk) and subscribers must be told so, not left stale.
  traffic.writing = false
  await writer
  const lastBefore = raw.frames[raw.frames.length - 1]
  const framesBefore = raw.frames.length
  const restartedAt = Date.now()
  await redis.restart()
  await until(() => raw.frames.slice(framesBefore).filter(f => f.event.type === 'sync').length >= 2, 'fresh syncs after the restart', 10_000)
    .catch((err: Error) => { t.fail(err.message, { framesAfterRestart: raw.frames.slice(framesBefore) }); throw err })
  const fresh = raw.frames.slice(framesBefore).filter(f => f.event.type === 'sync')
  t.comment(`re-synced ${Date.now() - restartedAt} ms after the restart began`)
  t.same(fresh.map(f => f.id === null ? 'group' : `item ${f.id}`).sort(), ['group', 'item k1'], 'the group and the item subscription were both re-synced')
  t.same(fresh.find(f => f.id === null)?.event.data, await app.streams.getGroup('fault', 'g'), 'the group sync holds the stored state')
  t.same(fresh.find(f => f.id === 'k1')?.event.data, await app.streams.get('fault', 'g', 'k1'), 'the item sync holds the stored item')
  // Stock clients drop a sync older than the last event they took (group: <, item: <=).
  t.ok(fresh.every(f => f.timestamp > lastBefore.timestamp), `the re-syncs are newer than the last frame before the outage (${fresh.map(f => f.timestamp).join(', ')} vs ${lastBefore.timestamp})`)
  const converged = async (): Promise<boolean> => {
    const stored = await app.streams.getGroup('fault', 'g')
    return same(group.getState() as unknown[], stored) && JSON.stringify(item.getState()) === JSON.stringify(await app.streams.get('fault', 'g', 'k1'))
  }
  await until(converged, 'the stock subscribers to take the re-sync', 3000).then(
    () => t.pass('the stock subscribers show what Redis holds after the restart'),
    async () => t.fail('the stock subscribers are left with stale data', { group: group.getState(), item: item.getState(), stored: await app.streams.getGroup('fault', 'g') }))

  // New writes flow: the writer runs again and every item is written anew.
  traffic.writing = true
  const mark = n
  const writer2 = (async () => {
    while (traffic.writing) {
      try {
        await app.streams.set('fault', 'g', `k${n % 5}`, { n: ++n })
      } catch (err) {
        failures.push({ code: (err as { code?: unknown }).code, ms: 0 })
      }
      await sleep(5)
    }
  })()
  t.teardown(async () => { traffic.writing = false; await writer2 })
  await until(() => n >= mark + 20, 'writes to succeed again', 10_000)
  traffic.writing = false
  await writer2
  await until(converged, 'the stock subscribers to converge on the stored state', 5000).then(
    () => t.pass('the stock subscribers converge on the stored state'),
    async () => t.fail('the stock subscribers did not converge', { group: group.getState(), item: item.getState(), stored: await app.streams.getGroup('fault', 'g') }))
  const after = raw.frames.slice(framesBefore)
  const changes = after.filter(f => ['create', 'update'].includes(f.event.type))
  t.ok(changes.length >= 20, `change frames flow to the raw subscriber after the restart (${changes.length})`)
  t.ok(after.every((f, i) => i === 0 || f.event.type === 'sync' || f.timestamp > after[i - 1].timestamp), 'timestamps rise after the restart')
  t.equal(raw.closeCode, null, 'the raw socket stayed open throughout')
  t.equal(app.streams.connectionCount, connections, 'still the same sockets')
})

t.test('a dead Redis at start fails register with STREAMS_ERR_BACKEND_UNAVAILABLE in bounded time', async t => {
  const port = await freePort()
  const app = Fastify({ logger: false })
  t.teardown(() => app.close().catch(() => {}))
  const started = Date.now()
  const err = await app.register(streams, {
    adapter: { class: REDIS, config: { redis_url: `redis://127.0.0.1:${port}`, connect_timeout_ms: 500 } }
  }).ready().then(() => null, (error: unknown) => error)
  const elapsed = Date.now() - started
  t.match(err, { code: 'STREAMS_ERR_BACKEND_UNAVAILABLE' })
  t.ok(elapsed < 2500, `failed within 2.5 s (${elapsed} ms)`)

  // camelCase config, the same outcome.
  const other = Fastify({ logger: false })
  t.teardown(() => other.close().catch(() => {}))
  await t.rejects(async () => {
    await other.register(streams, {
      adapter: { class: 'redis', config: { redisUrl: `redis://127.0.0.1:${port}`, connectTimeoutMs: 300 } }
    }).ready()
  }, { code: 'STREAMS_ERR_BACKEND_UNAVAILABLE' })
})
