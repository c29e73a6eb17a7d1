import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { createKvAdapter } from '../../lib/adapters/kv.js'
import { adapterContract } from './contract.js'

adapterContract(t, async (options = {}) => {
  const dir = await mkdtemp(join(tmpdir(), 'streams-sqlite-'))
  const make = () => createKvAdapter({ kind: 'kv', storeMethod: 'file_based', filePath: join(dir, 'nested', 'store.db'), ...options })
  return { adapter: make(), restart: async () => make(), durable: true, cleanup: () => rm(dir, { recursive: true, force: true }) }
})

t.test('a second adapter on the same file serves the same data, order, revisions and timestamps', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'streams-sqlite-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const filePath = join(dir, 'store.db')
  const first = createKvAdapter({ kind: 'kv', storeMethod: 'file_based', filePath })
  await first.start()
  for (const id of ['c', 'a', 'b']) await first.set('todo', 'inbox', id, { id })
  await first.set('todo', 'inbox', 'a', { id: 'a', v: 2 })
  await first.delete('todo', 'inbox', 'b')
  await first.set('todo', 'other:group', 'x', [1, 2])
  const before = await first.snapshotGroup('todo', 'inbox')
  await first.close()

  const second = createKvAdapter({ kind: 'kv', storeMethod: 'file_based', filePath })
  await second.start()
  t.teardown(() => second.close())
  const { epoch: _epoch, ...after } = await second.snapshotGroup('todo', 'inbox')
  const { epoch: _before, ...kept } = before
  t.same(after, kept, 'items in order, same rev and timestamp')
  t.same(await second.listAll(), { stream: [{ id: 'todo', groups: ['inbox', 'other:group'] }], count: 1 })
  const events: number[] = []
  second.subscribe(e => events.push(e.rev, e.timestamp))
  await second.set('todo', 'inbox', 'd', { id: 'd' })
  t.equal(events[0], before.rev + 1, 'the revision goes on from where it was')
  t.ok(events[1] > before.timestamp, 'timestamps go on rising')
})

t.test('a file that cannot be opened fails start with STREAMS_ERR_STORAGE', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'streams-sqlite-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await writeFile(join(dir, 'a-file'), '')
  const adapter = createKvAdapter({ kind: 'kv', storeMethod: 'file_based', filePath: join(dir, 'a-file', 'store.db') })
  await t.rejects(adapter.start(), { code: 'STREAMS_ERR_STORAGE' })
  await adapter.close().catch(() => {})
})
