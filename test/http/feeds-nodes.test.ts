// Two nodes on one Redis: writes on node A, SSE and long-poll readers (official client) on node B get every
// change and custom event in revision order; an offset from one node is valid on the other.
import t from 'tap'
import { serve, until } from '../helpers/app.js'
import { startRedisServer } from '../helpers/redis-server.js'
import { FeedReader, received, revOf, strictlyIncreasing, type FeedMessage } from './feeds-helpers.js'

// One subtest holds the whole scenario: the root test then ends only after its last assertion.
t.test('writes on node A reach readers on node B in revision order', async t => {
  const redis = await startRedisServer()
  t.teardown(() => redis.close())
  const options = { adapter: { class: 'redis' as const, config: { redis_url: redis.url } }, feeds: true }
  const a = await serve(options)
  const b = await serve(options)
  t.teardown(async () => {
    await a.app.close()
    await b.app.close()
  })
  const feedOf = (url: string) => `${url.replace('ws:', 'http:')}v1/groups/todo/shared`

  const readers = [new FeedReader(feedOf(b.url), 'sse'), new FeedReader(feedOf(b.url), 'sse'), new FeedReader(feedOf(b.url), 'long-poll')]
  await Promise.all(readers.map(async reader => await reader.start()))
  await until(() => readers.every(reader => reader.snapshotOffset !== null), 'the snapshots')

  // Concurrent writers on A: the log, not the order of acknowledgements, decides the order.
  await Promise.all(Array.from({ length: 4 }, async (_, w) => {
    for (let n = 0; n < 40; n++) {
      const id = `w${w}-${n % 5}`
      if (n % 7 === 6) await a.app.streams.send('todo', 'shared', { type: 'tick', data: { w, n } })
      else await a.app.streams.set('todo', 'shared', id, { id, w, n })
    }
  }))
  await a.app.streams.send('todo', 'shared', { type: 'marker', data: null })
  await until(() => readers.every(reader => reader.tail.some(m => m.event?.type === 'marker')), 'the marker on node B', 20_000)

  // The log as node A answers a catch-up read from B's snapshot offset: an offset is valid on every node.
  const fromA: FeedMessage[] = []
  let offset = readers[0].snapshotOffset!
  for (;;) {
    const response = await fetch(`${feedOf(a.url)}?offset=${offset}`)
    t.equal(response.status, 200)
    fromA.push(...await response.json() as FeedMessage[])
    offset = response.headers.get('stream-next-offset')!
    if (response.headers.get('stream-up-to-date') === 'true') break
  }
  t.equal(fromA.length, 161, 'every write and event is in the log')
  for (const [i, reader] of readers.entries()) {
    t.equal(revOf(reader.snapshotOffset!), revOf(readers[0].snapshotOffset!), `reader ${i}: same snapshot`)
    t.same(reader.tail.map(received), fromA.map(received), `reader ${i} (${reader.live}): same entries, same order as node A's log`)
    t.ok(strictlyIncreasing(reader.offsets), `reader ${i}: offsets strictly increase`)
    t.same(reader.items('todo'), new Map((await a.app.streams.getGroup('todo', 'shared')).map(item => [(item as { id: string }).id, item])), `reader ${i}: equal to the group`)
  }
  await Promise.all(readers.map(async reader => await reader.stop()))
})
