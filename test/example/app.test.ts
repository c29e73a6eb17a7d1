// The example's HTTP routes (example/app.js) on the plugin: PATCH is one atomic merge. On Redis, where every
// read is a round trip, concurrent requests interleave: a read-then-write would lose one of two PATCHes.
import t from 'tap'
import streams from '../../lib/index.js'
import { startExample } from '../../example/harness.mjs'
import { startRedisServer } from '../helpers/redis-server.js'

const redis = await startRedisServer()
t.teardown(() => redis.close())
const { app, base } = await startExample(streams, {
  adapter: { class: 'modules::streams::adapters::RedisAdapter', config: { redis_url: redis.url } }
})
t.teardown(() => app.close())

async function patch (user: string, id: string, body: unknown): Promise<Response> {
  return await fetch(`${base}/api/todos/${user}/${id}`, {
    method: 'PATCH',
    headers: { authorization: `Bearer ${user}-token`, 'content-type': 'application/json' },
    body: JSON.stringify(body)
  })
}

t.test('PATCHes of different fields sent together all land (no read-then-write)', async t => {
  const ids = Array.from({ length: 20 }, (_, i) => `p${i}`)
  for (const id of ids) await app.streams.set('todo', 'ana', id, { id, title: 'old', done: false, createdAt: '2026-01-01T00:00:00.000Z' })
  const replies = await Promise.all(ids.flatMap(id => [patch('ana', id, { title: `new ${id}` }), patch('ana', id, { done: true })]))
  t.same(replies.map(reply => reply.status), replies.map(() => 200))
  for (const id of ids) t.same(await app.streams.get('todo', 'ana', id), { id, title: `new ${id}`, done: true, createdAt: '2026-01-01T00:00:00.000Z' }, id)
  t.match(await replies[0]?.json(), { id: 'p0', title: 'new p0' }, 'a reply is the updated item')
})

t.test('PATCH of a missing item: 404, nothing written', async t => {
  const before = await app.streams.getGroup('todo', 'bob')
  const reply = await patch('bob', 'nope', { done: true })
  t.equal(reply.status, 404)
  t.same(await app.streams.getGroup('todo', 'bob'), before)
  t.equal(await app.streams.get('todo', 'bob', 'nope'), null)
})
