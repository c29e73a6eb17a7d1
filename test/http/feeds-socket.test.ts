// With feeds on, every socket event envelope carries `offset`: the Stream-Next-Offset a feed reader holds after
// that event, so a page can hand its state from the socket to a feed (or back) without a gap.
import t from 'tap'
import { RawClient, serve, until } from '../helpers/app.js'
import type { FeedMessage } from './feeds-helpers.js'

t.test('socket envelopes carry their feed offset', async t => {
  const { app, url } = await serve({ feeds: true })
  t.teardown(() => app.close())
  const base = `${url.replace('ws:', 'http:')}v1/groups/todo/ana`
  const client = await RawClient.open(url)
  t.teardown(() => client.close())
  client.join('todo', 'ana')
  await until(() => client.of('sync').length === 1, 'the sync')
  await app.streams.set('todo', 'ana', 'a', { id: 'a' })
  await app.streams.send('todo', 'ana', { type: 'ping', data: 1 })
  await app.streams.set('todo', 'ana', 'b', { id: 'b' })
  await until(() => client.frames.length === 4, 'three events')
  const [, first, event, last] = client.frames as Array<{ offset?: string }>

  const after = await fetch(`${base}?offset=${first.offset}`)
  t.same((await after.json() as FeedMessage[]).map(m => m.headers.operation), ['event', 'insert'], 'a feed resumed from the socket offset gets what followed')
  t.equal(after.headers.get('stream-next-offset'), last.offset, 'and ends at the last envelope\'s offset')
  t.ok(first.offset! < event.offset! && event.offset! < last.offset!, 'custom events take their own offset')
})
