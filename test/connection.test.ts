// One socket's life: ordered joins and leaves, the sync/live-event race, and every kind of bad input.
import t from 'tap'
import { WebSocket } from 'ws'
import { marked, RawClient, serve, waitFor, type Envelope } from './helpers/app.js'
import { openStock } from './helpers/stock.js'

type Item = { id: string, n: number }

/** Applies frames the way a group subscriber does, and checks nothing came before the sync. */
function replay (frames: Envelope[]): { state: Map<string, unknown>, beforeSync: number } {
  const state = new Map<string, unknown>()
  let synced = false
  let beforeSync = 0
  for (const frame of frames) {
    if (frame.event.type === 'sync') {
      synced = true
      state.clear()
      for (const item of frame.event.data as Item[]) state.set(item.id, item)
    } else if (!synced) {
      beforeSync++
    } else if (frame.event.type === 'delete') {
      state.delete(frame.id!)
    } else if (frame.event.type === 'create' || frame.event.type === 'update') {
      state.set(frame.id!, frame.event.data)
    }
  }
  return { state, beforeSync }
}

t.test('a join while another task writes to the group in a tight loop: final state = getGroup, nothing before the sync', async t => {
  const { app, url } = await serve()
  t.teardown(() => app.close())
  const control = { writing: true }
  let writes = 0
  const writer = (async () => {
    while (control.writing) {
      const id = `k${writes % 25}`
      if (writes % 9 === 8) await app.streams.delete('race', 'g', id)
      else await app.streams.set('race', 'g', id, { id, n: writes })
      writes++
      // Let the socket's frames through now and then without slowing the loop much.
      if (writes % 50 === 0) await new Promise(resolve => setImmediate(resolve))
    }
  })()
  const clients: RawClient[] = []
  for (let i = 0; i < 8; i++) {
    const client = await RawClient.open(url)
    clients.push(client)
    client.join('race', 'g')
    await new Promise(resolve => setTimeout(resolve, 15))
  }
  await new Promise(resolve => setTimeout(resolve, 100))
  control.writing = false
  await writer
  const final = await app.streams.getGroup('race', 'g') as Item[]
  const expected = new Map(final.map(item => [item.id, item]))
  for (const [index, client] of clients.entries()) {
    await waitFor(() => JSON.stringify([...replay(client.frames).state.entries()].sort()) === JSON.stringify([...expected.entries()].sort()), `client ${index} state`)
    const { state, beforeSync } = replay(client.frames)
    t.equal(beforeSync, 0, `client ${index}: no event before its sync`)
    t.same(Object.fromEntries(state), Object.fromEntries(expected), `client ${index}: state equals getGroup`)
    const revs = client.frames.map(frame => frame.rev!)
    t.ok(revs.every((rev, i) => i === 0 || rev === revs[i - 1] + 1), `client ${index}: revisions consecutive after the sync (no loss, no duplicate)`)
    const stamps = client.frames.map(frame => frame.timestamp)
    t.ok(stamps.every((ts, i) => i === 0 || ts > stamps[i - 1]), `client ${index}: timestamps strictly increasing`)
  }
  t.ok(writes > 200, `the writer made ${writes} writes meanwhile`)
  await Promise.all(clients.map(client => client.close()))
})

t.test('one frame per socket per event, even when several of its subscriptions match', async t => {
  const { app, url } = await serve()
  t.teardown(() => app.close())
  const client = await RawClient.open(url)
  t.teardown(() => client.close())
  client.join('s', 'g')
  client.join('s', 'g')
  client.join('s', 'g', 'a')
  await waitFor(() => client.of('sync').length === 3, 'three syncs')
  t.same(client.of('sync').map(frame => [frame.id, frame.event.data]), [[null, []], [null, []], ['a', null]], 'group sync is an array, missing item sync is null')
  await app.streams.set('s', 'g', 'a', { v: 1 })
  await app.streams.send('s', 'g', { type: 'hello', data: 'x' })
  await app.streams.send('s', 'g', { type: 'item-only', data: 'y' }, 'a')
  await marked(app, client, 's', 'g')
  t.equal(client.frames.length, 6, 'each event once')
  t.same(client.frames.slice(3).map(frame => frame.event.type), ['create', 'event', 'event'])
})

t.test('envelopes are exactly the engine\'s, item rooms are (stream, group, id)', async t => {
  const { app, url } = await serve()
  t.teardown(() => app.close())
  const client = await RawClient.open(url)
  t.teardown(() => client.close())
  client.join('todo', 'inbox', 't1')
  await waitFor(() => client.frames.length === 1, 'sync')
  await app.streams.set('todo', 'other', 't1', { cross: 'talk' })
  await app.streams.set('todo', 'inbox', 't1', { title: 'x' })
  await waitFor(() => client.frames.length === 2, 'the create')
  const raw = await new Promise<string>(resolve => {
    client.socket.once('message', (data, isBinary) => {
      t.equal(isBinary, false, 'a text frame (browsers cannot parse a binary one)')
      resolve(data.toString())
    })
    app.streams.set('todo', 'inbox', 't1', { title: 'y' }).catch(t.threw)
  })
  t.match(raw, /^\{"type":"stream","timestamp":\d+,"streamName":"todo","groupId":"inbox","id":"t1","event":\{"type":"update","data":\{"title":"y","id":"t1"\}\},"rev":2\}$/, 'rev counts the changes of this group only')
  t.same(client.frames.map(frame => frame.event.data), [null, { title: 'x', id: 't1' }, { title: 'y', id: 't1' }], 'no cross-talk from the same id in another group')
})

t.test('deleting a missing item emits nothing; leave stops events; unknown leave is harmless', async t => {
  const { app, url } = await serve()
  t.teardown(() => app.close())
  const client = await RawClient.open(url)
  t.teardown(() => client.close())
  const sub = client.join('s', 'g')
  await waitFor(() => client.frames.length === 1, 'sync')
  await app.streams.delete('s', 'g', 'ghost')
  client.leave('s', 'g', 'never-joined')
  await app.streams.set('s', 'g', 'a', 1)
  await waitFor(() => client.frames.length === 2, 'create')
  t.same(client.frames.map(frame => frame.event.type), ['sync', 'create'])
  client.leave('s', 'g', sub)
  client.join('s', 'marker')
  await waitFor(() => client.frames.length === 3, 'marker sync (the leave was handled before it)')
  await app.streams.set('s', 'g', 'b', 2)
  await marked(app, client, 's', 'marker')
  t.equal(client.frames.length, 3, 'no event after leave')
})

/** Each bad input: the offending socket is refused cleanly, and a second client is served throughout. */
t.test('bad input is refused cleanly and never disturbs another client', async t => {
  const { app, url } = await serve({ maxSubscriptionsPerSocket: 3, maxNameLength: 64, maxInvalidFrames: 3 })
  t.teardown(() => app.close())
  const bystander = await RawClient.open(url)
  t.teardown(() => bystander.close())
  bystander.join('safe', 'g')
  await app.streams.set('safe', 'g', 'x', { v: 0 })

  let round = 0
  async function bystanderStillServed (t: Test): Promise<void> {
    round++
    await app.streams.set('safe', 'g', 'x', { v: round })
    await waitFor(() => bystander.frames.some(frame => (frame.event.data as { v?: number } | undefined)?.v === round), 'bystander update')
    t.equal(bystander.closeCode, null, 'bystander still open')
    t.same(await app.streams.get('safe', 'g', 'x'), { v: round, id: 'x' }, 'stored data intact')
  }
  type Test = typeof t

  const garbage: Array<[string, string | Buffer]> = [
    ['malformed JSON', '{"type":"join",'],
    ['binary garbage', Buffer.from([0xff, 0x00, 0xfe, 0x13, 0x37])],
    ['unknown message type', JSON.stringify({ type: 'subscribe', data: { streamName: 's', groupId: 'g', subscriptionId: '1' } })],
    ['missing fields', JSON.stringify({ type: 'join', data: { streamName: 's' } })],
    ['non-string fields', JSON.stringify({ type: 'join', data: { streamName: 1, groupId: {}, subscriptionId: [] } })],
    ['a JSON array', '[1,2,3]'],
    ['a leave with a name the plugin refuses', JSON.stringify({ type: 'leave', data: { streamName: '__proto__', groupId: 'g', subscriptionId: '1' } })]
  ]
  for (const [label, frame] of garbage) {
    await t.test(label, async t => {
      const client = await RawClient.open(url)
      client.socket.send(frame)
      client.join('s', 'ok')
      await waitFor(() => client.of('sync').length === 1, 'the valid join after it')
      t.equal(client.closeCode, null, 'one bad frame does not close the socket')
      t.equal(client.of('sync').length, 1, 'the bad frame got no subscription')
      await bystanderStillServed(t)
      await client.close()
    })
  }

  await t.test('a join with a name the plugin refuses gets an error event STREAMS_ERR_INVALID_NAME in its room', async t => {
    const refused: Array<[string, Record<string, unknown>]> = [
      ['a stream name over the length limit', { streamName: 's'.repeat(65), groupId: 'g' }],
      ['__proto__ as a stream name', { streamName: '__proto__', groupId: 'g' }],
      ['":" in a stream name', { streamName: 'a:b', groupId: 'g' }],
      ['an empty group name', { streamName: 's', groupId: '' }],
      ['constructor as a group name', { streamName: 's', groupId: 'constructor' }],
      ['prototype as an item id', { streamName: 's', groupId: 'g', id: 'prototype' }]
    ]
    const client = await RawClient.open(url)
    for (const [label, names] of refused) {
      const before = client.frames.length
      client.socket.send(JSON.stringify({ type: 'join', data: { ...names, subscriptionId: 'bad' } }))
      await waitFor(() => client.frames.length > before, label)
      const answer = client.frames[before]
      t.same([answer.streamName, answer.groupId, answer.id], [names.streamName, names.groupId, names.id ?? null], `${label}: in the subscription's room`)
      t.equal(answer.event.event?.type, 'error', label)
      t.equal(answer.event.event?.data.code, 'STREAMS_ERR_INVALID_NAME', label)
    }
    t.equal(client.closeCode, null, 'refused names are not garbage: the socket stays open')
    client.join('s', 'ok')
    await waitFor(() => client.of('sync').length === 1, 'a valid join after them')
    await bystanderStillServed(t)
    await client.close()
  })

  await t.test('repeated garbage closes that socket only (1008)', async t => {
    const client = await RawClient.open(url)
    for (let i = 0; i < 5; i++) client.socket.send('nonsense')
    await waitFor(() => client.closeCode !== null, 'close')
    t.equal(client.closeCode, 1008)
    await bystanderStillServed(t)
  })

  await t.test('a frame over maxPayload closes that socket with 1009', async t => {
    const client = await RawClient.open(url)
    client.socket.send(JSON.stringify({ type: 'join', data: { streamName: 's', groupId: 'g', subscriptionId: 'x'.repeat(70 * 1024) } }))
    await waitFor(() => client.closeCode !== null, 'close')
    t.equal(client.closeCode, 1009)
    await bystanderStillServed(t)
  })

  await t.test('more subscriptions than the limit: the extra join is refused with an error event', async t => {
    const client = await RawClient.open(url)
    for (const group of ['a', 'b', 'c', 'd']) client.join('s', group)
    await waitFor(() => client.frames.length === 4, 'four answers')
    t.same(client.frames.map(frame => frame.event.type), ['sync', 'sync', 'sync', 'event'])
    t.equal(client.frames[3].event.event?.data.code, 'STREAMS_ERR_TOO_MANY_SUBSCRIPTIONS')
    t.equal(client.closeCode, null)
    await bystanderStillServed(t)
    await client.close()
  })

  await t.test('hostile names through the API are refused with STREAMS_ERR_INVALID_NAME', async t => {
    for (const [stream, group, id] of [['__proto__', 'g', 'i'], ['s', 'constructor', 'i'], ['s', 'g', 'prototype'], ['', 'g', 'i'], ['a:b', 'g', 'i'], ['s', 'g'.repeat(65), 'i']]) {
      await t.rejects(app.streams.set(stream, group, id, 1), { code: 'STREAMS_ERR_INVALID_NAME' }, `${stream}/${group}/${id}`)
    }
    await t.rejects(app.streams.get(1 as never, 'g', 'i'), { code: 'STREAMS_ERR_INVALID_NAME' })
    t.equal(({} as Record<string, unknown>).polluted, undefined)
    await bystanderStillServed(t)
  })
})

t.test('a slow consumer past its byte cap is closed (1013); others keep receiving', async t => {
  const { app, url } = await serve({ maxBufferedBytes: 64 * 1024 })
  t.teardown(() => app.close())
  const fast = await RawClient.open(url)
  t.teardown(() => fast.close())
  fast.join('s', 'g')
  const slow = new WebSocket(url)
  await new Promise(resolve => slow.once('open', resolve))
  let slowClose: number | null = null
  slow.on('close', code => { slowClose = code })
  slow.send(JSON.stringify({ type: 'join', data: { streamName: 's', groupId: 'g', subscriptionId: '1' } }))
  await waitFor(() => fast.frames.length === 1 && app.streams.connectionCount === 2, 'both joined')
  await new Promise(resolve => setTimeout(resolve, 50))
  // Stop reading on the slow socket: its kernel buffers fill, then the server's send buffer grows.
  ;(slow as unknown as { _socket: { pause(): void } })._socket.pause()
  const big = 'x'.repeat(16 * 1024)
  for (let i = 0; i < 400 && app.streams.connectionCount === 2; i++) {
    await app.streams.set('s', 'g', 'blob', { big, i })
    if (i % 20 === 0) await new Promise(resolve => setTimeout(resolve, 5))
  }
  await waitFor(() => app.streams.connectionCount === 1, 'the slow socket to be dropped')
  ;(slow as unknown as { _socket: { resume(): void } })._socket.resume()
  await waitFor(() => slowClose !== null, 'the slow client to see the close', 10000)
  t.equal(slowClose, 1013)
  const last = await app.streams.get('s', 'g', 'blob') as { i: number }
  await waitFor(() => fast.frames.some(frame => (frame.event.data as { i?: number })?.i === last.i), 'the fast client got everything')
  t.equal(fast.closeCode, null)
})

t.test('joins of an unchanged group share one sync; a change makes the next join see it', async t => {
  const { app, url } = await serve()
  t.teardown(() => app.close())
  await app.streams.set('herd', 'g', 'a', { v: 1 })
  const clients = await Promise.all(Array.from({ length: 3 }, () => RawClient.open(url)))
  t.teardown(() => Promise.all(clients.map(client => client.close())))
  for (const client of clients) client.join('herd', 'g')
  await waitFor(() => clients.every(client => client.frames.length === 1), 'three syncs')
  t.same(new Set(clients.map(client => JSON.stringify(client.frames[0]))).size, 1, 'the same sync bytes for every joiner')
  await app.streams.send('herd', 'g', { type: 'ping', data: null })
  await app.streams.set('herd', 'g', 'b', { v: 2 })
  const late = await RawClient.open(url)
  t.teardown(() => late.close())
  late.join('herd', 'g')
  await waitFor(() => late.frames.length === 1, 'the late sync')
  t.same(late.frames[0].event.data, [{ v: 1, id: 'a' }, { v: 2, id: 'b' }], 'the late joiner sees the change')
  t.ok(late.frames[0].timestamp > clients[0].frames[0].timestamp)
})

t.test('the stock node client sees the refusal of a name instead of waiting forever', async t => {
  const { app, url } = await serve()
  t.teardown(() => app.close())
  const stream = openStock(t, url)
  const errors: Array<{ code: string }> = []
  const group = stream.subscribeGroup('a:b', 'inbox')
  group.onEvent('error', (data: { code: string }) => { errors.push(data) })
  const item = stream.subscribeItem('todo', 'inbox', '__proto__')
  item.onEvent('error', (data: { code: string }) => { errors.push(data) })
  await waitFor(() => errors.length === 2, 'both refusals')
  t.same(errors.map(error => error.code), ['STREAMS_ERR_INVALID_NAME', 'STREAMS_ERR_INVALID_NAME'])
})
