// The stock Motia clients from npm, unmodified, against the plugin.
import t from 'tap'
import { serve, waitFor } from './helpers/app.js'
import { openStock } from './helpers/stock.js'

type Item = { id: string, [key: string]: unknown }

const byId = (items: unknown): Item[] => [...(items as Item[])].sort((a, b) => a.id.localeCompare(b.id))

for (const kind of ['stream-client-node', 'stream-client'] as const) {
  t.test(`${kind}: group and item subscriptions follow sync, create, update, delete and custom events`, async t => {
    const { app, url } = await serve()
    t.teardown(() => app.close())
    await app.streams.set('todo', 'inbox', 't1', { title: 'milk' })
    await app.streams.set('todo', 'inbox', 't2', { title: 'bread' })

    const stream = openStock(t, url, { kind })
    const group = stream.subscribeGroup('todo', 'inbox')
    const item = stream.subscribeItem('todo', 'inbox', 't1')
    const typing: unknown[] = []
    const pinged: unknown[] = []
    group.onEvent('typing', data => typing.push(data))
    item.onEvent('ping', data => pinged.push(data))

    await waitFor(() => (group.getState() as Item[]).length === 2 && item.getState() !== null, 'the sync')
    t.same(group.getState(), [{ title: 'milk', id: 't1' }, { title: 'bread', id: 't2' }], 'group sync: items in insertion order, id injected')
    t.same(item.getState(), { title: 'milk', id: 't1' }, 'item sync: the value')

    await app.streams.set('todo', 'inbox', 't3', { title: 'eggs' })
    await app.streams.set('todo', 'inbox', 't1', { title: 'oat milk' })
    await app.streams.update('todo', 'inbox', 't2', [{ type: 'set', path: 'done', value: true }])
    await app.streams.delete('todo', 'inbox', 't3')
    await app.streams.send('todo', 'inbox', { type: 'typing', data: { user: 'ana' } })
    await app.streams.send('todo', 'inbox', { type: 'ping', data: 1 }, 't1')

    const expected = await app.streams.getGroup('todo', 'inbox')
    await waitFor(() => JSON.stringify(byId(group.getState())) === JSON.stringify(byId(expected)), 'group state to match the server')
    await waitFor(() => typing.length === 1 && pinged.length === 1, 'custom events')
    t.same(byId(group.getState()), byId(expected), 'group ends with the server state')
    t.same(item.getState(), await app.streams.get('todo', 'inbox', 't1'), 'item ends with the server state')
    t.same(typing, [{ user: 'ana' }], 'group custom event, once')
    t.same(pinged, [1], 'item custom event, once')

    await app.streams.delete('todo', 'inbox', 't1')
    await waitFor(() => item.getState() === null, 'item delete')
    t.equal(item.getState(), null)
  })
}

t.test('two updates of one item in the same millisecond both land', async t => {
  const { app, url } = await serve()
  t.teardown(() => app.close())
  const stream = openStock(t, url)
  const group = stream.subscribeGroup('counter', 'main')
  const item = stream.subscribeItem('counter', 'main', 'c')
  await waitFor(() => item.getState() === null && (group as unknown as { lastTimestamp: number }).lastTimestamp > 0, 'the sync')
  await app.streams.set('counter', 'main', 'c', { n: 0 })
  await waitFor(() => (group.getState() as Item[]).length === 1, 'create')
  // Back to back, well inside one millisecond: a plain ms clock would give both the same timestamp.
  await Promise.all([
    app.streams.set('counter', 'main', 'c', { n: 1 }),
    app.streams.set('counter', 'main', 'c', { n: 2 })
  ])
  await waitFor(() => (item.getState() as { n: number } | null)?.n === 2 && (group.getState() as unknown as Array<{ n: number }>)[0]?.n === 2, 'the second update')
  t.same(item.getState(), { n: 2, id: 'c' })
  t.same(group.getState(), [{ n: 2, id: 'c' }])
})

t.test('after the server drops every socket, the client reconnects and re-syncs', async t => {
  const { app, url } = await serve()
  t.teardown(() => app.close())
  await app.streams.set('todo', 'inbox', 'a', { title: 'a' })
  const stream = openStock(t, url)
  const group = stream.subscribeGroup('todo', 'inbox')
  const item = stream.subscribeItem('todo', 'inbox', 'b')
  await waitFor(() => (group.getState() as Item[]).length === 1, 'the first sync')

  app.streams.dropConnections()
  await waitFor(() => app.streams.connectionCount === 0, 'the sockets to close')
  // Changes made while the client is away reach it only through the fresh sync.
  await app.streams.set('todo', 'inbox', 'b', { title: 'b' })
  await app.streams.delete('todo', 'inbox', 'a')
  await waitFor(() => app.streams.connectionCount === 1, 'the client to reconnect (it retries every 2 s)', 8000)
  await waitFor(() => JSON.stringify(group.getState()) === JSON.stringify([{ title: 'b', id: 'b' }]), 'the re-sync')
  t.same(group.getState(), [{ title: 'b', id: 'b' }])
  await waitFor(() => item.getState() !== null, 'the item re-sync')
  t.same(item.getState(), { title: 'b', id: 'b' })
})
