// Readers through the official client (SSE and long-poll) while writes flow, dropped at random and resumed from
// their last offset: each ends equal to getGroup, with every change and custom event once and in log order.
import t from 'tap'
import { createKvAdapter, type StreamEvent } from '../../lib/index.js'
import { serve, until } from '../helpers/app.js'
import { byId, expected, FeedReader, randomWrite, received, revOf, seededRandom, strictlyIncreasing } from './feeds-helpers.js'

const adapter = createKvAdapter({ storeMethod: 'in_memory' })
const committed: StreamEvent[] = []
adapter.subscribe((event) => { if (event.group === 'live') committed.push(event) })
const { app, url } = await serve({ adapter, feeds: { sse_max_duration_ms: 1500 } })
t.teardown(async () => {
  await app.close()
  await adapter.close()
})
const feed = `${url.replace('ws:', 'http:')}v1/groups/todo/live`

// Seeded, so a failure can be replayed.
const seed = Number(process.env.FEEDS_SEED ?? Date.now() % 100_000)
t.comment(`FEEDS_SEED=${seed}`)
const random = seededRandom(seed)

await app.streams.set('todo', 'live', 'seed', { id: 'seed', n: 0 })
const readers = Array.from({ length: 6 }, (_, i) => new FeedReader(feed, i % 2 === 0 ? 'sse' : 'long-poll'))
await Promise.all(readers.map(async reader => await reader.start()))
const away = new Set<FeedReader>()

for (let n = 1; n <= 300; n++) {
  await randomWrite(app.streams, 'live', random, n)
  if (random() < 0.1) {
    const reader = readers[Math.floor(random() * readers.length)]
    if (away.has(reader)) {
      away.delete(reader)
      await reader.start()
    } else {
      away.add(reader)
      await reader.stop()
    }
  }
  if (n % 50 === 0) await new Promise(resolve => setTimeout(resolve, 20)) // let the readers breathe
}
for (const reader of away) await reader.start()
await app.streams.send('todo', 'live', { type: 'marker', data: null })
await until(() => readers.every(reader => reader.tail.some(m => m.headers.operation === 'event' && m.event?.type === 'marker')), 'every reader has the marker', 30_000)

const group = byId(await app.streams.getGroup('todo', 'live'))
for (const [i, reader] of readers.entries()) {
  t.test(`reader ${i} (${reader.live})`, async t => {
    t.same(reader.failures, [], 'no terminal error')
    t.equal(reader.snapshots, 1, 'one snapshot, then the log only')
    t.same(reader.items('todo'), group, 'ends equal to getGroup')
    const from = revOf(reader.snapshotOffset!)
    t.same(reader.tail.map(received), committed.filter(event => event.rev > from).map(expected), 'every change and custom event once, in log order')
    t.ok(strictlyIncreasing(reader.offsets), 'offsets strictly increase')
  })
}
await Promise.all(readers.map(async reader => await reader.stop()))
