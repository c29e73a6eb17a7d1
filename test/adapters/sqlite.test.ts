import { execFileSync } from 'node:child_process'
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { createKvAdapter, type KvAdapter } from '../../lib/adapters/kv.js'
import { adapterContract } from './contract.js'
import { serve, until } from '../helpers/app.js'

/** Runs one read-only query on the file, through a connection of its own. */
async function query<T> (filePath: string, sql: string): Promise<T[]> {
  const { default: sqlite3 } = await import('sqlite3')
  return await new Promise((resolve, reject) => {
    const db = new sqlite3.Database(filePath, sqlite3.OPEN_READONLY, (err) => { if (err !== null) reject(err) })
    db.all<T>(sql, (err, rows) => db.close(() => err === null ? resolve(rows) : reject(err)))
  })
}

/** Rows of the file's groups, items and change log. */
async function rowCount (filePath: string): Promise<number> {
  const [{ n }] = await query<{ n: number }>(filePath,
    'SELECT (SELECT count(*) FROM groups) + (SELECT count(*) FROM items) + (SELECT count(*) FROM changes) AS n')
  return n
}

adapterContract(t, async (options = {}) => {
  const dir = await mkdtemp(join(tmpdir(), 'streams-sqlite-'))
  const filePath = join(dir, 'nested', 'store.db')
  const make = () => createKvAdapter({ storeMethod: 'file_based', filePath, ...options })
  return {
    adapter: make(),
    restart: async () => make(),
    durable: true,
    itemTimestamps: true,
    footprint: () => rowCount(filePath),
    cleanup: () => rm(dir, { recursive: true, force: true })
  }
})

/** A SQLite file in a temp dir (removed by the test's teardown) and a started adapter on it. */
async function fileStore (t: Test): Promise<{ filePath: string, first: KvAdapter }> {
  const dir = await mkdtemp(join(tmpdir(), 'streams-sqlite-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const filePath = join(dir, 'store.db')
  const first = createKvAdapter({ storeMethod: 'file_based', filePath })
  await first.start()
  return { filePath, first }
}

t.test('a second adapter on the same file serves the same data, order, revisions and timestamps', async t => {
  const { filePath, first } = await fileStore(t)
  for (const id of ['c', 'a', 'b']) await first.set('todo', 'inbox', id, { id })
  await first.set('todo', 'inbox', 'a', { id: 'a', v: 2 })
  await first.delete('todo', 'inbox', 'b')
  await first.set('todo', 'other:group', 'x', [1, 2])
  // Quotes, SQL and replacement-pattern look-alikes, NUL and astral characters, in names and values alike.
  const tricky = "it's '' $& $' $` $$ ? ); DROP TABLE items; -- \u0000 ü 😀"
  await first.set(tricky, tricky, tricky, { text: tricky })
  await first.publish(tricky, tricky, tricky, { type: 'event', event: { type: tricky, data: tricky } })
  const before = await first.snapshotGroup('todo', 'inbox')
  await first.close()

  const second = createKvAdapter({ storeMethod: 'file_based', filePath })
  await second.start()
  t.teardown(() => second.close())
  const { epoch: _epoch, ...after } = await second.snapshotGroup('todo', 'inbox')
  const { epoch: _before, ...kept } = before
  t.same(after, kept, 'items in order, same rev and timestamp')
  t.same(await second.listAll(), { stream: [{ id: tricky, groups: [tricky] }, { id: 'todo', groups: ['inbox', 'other:group'] }], count: 2 })
  t.same(await second.get(tricky, tricky, tricky), { text: tricky }, 'any text survives the file')
  t.same((await second.readChanges(tricky, tricky, 0, 10)).changes.map(c => [c.id, c.event]), [
    [tricky, { type: 'create', data: { text: tricky } }],
    [tricky, { type: 'event', event: { type: tricky, data: tricky } }]
  ])
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
  const adapter = createKvAdapter({ storeMethod: 'file_based', filePath: join(dir, 'a-file', 'store.db') })
  await t.rejects(adapter.start(), { code: 'STREAMS_ERR_STORAGE' })
  await adapter.close().catch(() => {})
})

t.test('a file SQLite can only open read-only fails at start, not at the first write', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'streams-sqlite-'))
  const filePath = join(dir, 'store.db')
  const first = createKvAdapter({ storeMethod: 'file_based', filePath })
  await first.start()
  await first.set('s', 'g', 'a', 1)
  await first.close()
  await chmod(filePath, 0o444)
  // root ignores file modes: the immutable attribute makes the file read-only for root too.
  const root = process.getuid?.() === 0
  if (root) execFileSync('chattr', ['+i', filePath])
  t.teardown(async () => {
    if (root) execFileSync('chattr', ['-i', filePath])
    await rm(dir, { recursive: true, force: true })
  })
  const adapter = createKvAdapter({ storeMethod: 'file_based', filePath })
  await t.rejects(adapter.start(), { code: 'STREAMS_ERR_STORAGE' })
  await adapter.close()
})

t.test('an item row that cannot be read is skipped and counted; the store still starts', async t => {
  const { filePath, first } = await fileStore(t)
  for (const id of ['a', 'b', 'c']) await first.set('s', 'g', id, { id })
  await first.close()
  const { default: sqlite3 } = await import('sqlite3')
  await new Promise<void>((resolve, reject) => {
    const db = new sqlite3.Database(filePath)
    db.run("UPDATE items SET value = '{not json' WHERE id = 'b'", (err) => db.close(() => err === null ? resolve() : reject(err)))
  })
  const warnings: Error[] = []
  const onWarning = (warning: Error) => warnings.push(warning)
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  const second = createKvAdapter({ storeMethod: 'file_based', filePath })
  await second.start()
  t.teardown(() => second.close())
  t.equal(second.skippedItems, 1)
  t.same(await second.getGroup('s', 'g'), [{ id: 'a' }, { id: 'c' }], 'the readable items are served')
  await until(() => warnings.some(w => (w as Error & { code?: string }).code === 'STREAMS_SKIPPED_ITEMS'), 'the warning')
  const { app, url } = await serve({ adapter: second, metrics_path: '/metrics' })
  t.teardown(() => app.close())
  const exposition = await (await fetch(url.replace('ws:', 'http:') + 'metrics')).text()
  t.match(exposition, /^fastify_streams_skipped_items 1$/m, 'an operator sees the skipped item')
  const next = await second.set('s', 'g', 'd', { id: 'd' })
  t.equal(next.event!.rev, 4, 'revisions go on')
})

t.test('a file written by the keyv-based store of 0.1 is imported: items, order, revisions and timestamps', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'streams-sqlite-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const filePath = join(dir, 'store.db')
  // The rows as @keyv/sqlite wrote them: keyv's serializer doubles a leading ':' in strings.
  const rows = [
    ['fastifystreams:["i","todo","inbox","b"]', '{"value":{"v":{"id":"b","note":"::colon"},"o":0,"r":1,"t":1000}}'],
    ['fastifystreams:["i","todo","inbox","a"]', '{"value":{"v":{"id":"a"},"o":2,"r":3,"t":1002}}'],
    ['fastifystreams:["g","todo","inbox"]', '{"value":{"r":4,"t":1003}}'],
    ['fastifystreams:["i","todo","other:group","x"]', '{"value":{"v":[1,2],"o":0,"r":1,"t":900}}']
  ]
  const { default: sqlite3 } = await import('sqlite3')
  await new Promise<void>((resolve, reject) => {
    const db = new sqlite3.Database(filePath)
    db.serialize()
    db.run('CREATE TABLE keyv(key VARCHAR(255) PRIMARY KEY, value TEXT )')
    for (const row of rows) db.run('INSERT INTO keyv VALUES (?, ?)', row)
    db.close((err) => err === null ? resolve() : reject(err))
  })
  const adapter = createKvAdapter({ storeMethod: 'file_based', filePath })
  await adapter.start()
  t.teardown(() => adapter.close())
  t.match(await adapter.snapshotGroup('todo', 'inbox'), { items: [{ id: 'b', note: ':colon' }, { id: 'a' }], ids: ['b', 'a'], rev: 4, timestamp: 1003 })
  t.same(await adapter.listAll(), { stream: [{ id: 'todo', groups: ['inbox', 'other:group'] }], count: 1 })
  t.match(await adapter.readChanges('todo', 'inbox', 0, 10), { changes: [], rev: 4, trimmed: 4 }, 'the log starts empty after the imported history')
  const next = await adapter.set('todo', 'inbox', 'c', { id: 'c' })
  t.equal(next.event!.rev, 5, 'revisions go on')
  t.same(await adapter.getGroup('todo', 'inbox'), [{ id: 'b', note: ':colon' }, { id: 'a' }, { id: 'c' }])
})

t.test('without the sqlite3 package, a file store fails at start with STREAMS_ERR_MISSING_PACKAGE; memory needs none', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'streams-sqlite-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const fixture = fileURLToPath(new URL('../fixtures/without-sqlite3.ts', import.meta.url))
  const output = execFileSync(process.execPath, [`--import=${import.meta.resolve('@tapjs/typescript/import')}`, fixture, join(dir, 'store.db')], {
    env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1' },
    encoding: 'utf8'
  })
  t.equal(output.trim(), 'STREAMS_ERR_MISSING_PACKAGE 1')
})

t.test('a file of schema 1 (items without timestamps) opens and works: migrated in place', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'streams-sqlite-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const filePath = join(dir, 'store.db')
  // The tables as schema 1 wrote them: one group with two items and its log.
  const { default: sqlite3 } = await import('sqlite3')
  await new Promise<void>((resolve, reject) => {
    const db = new sqlite3.Database(filePath)
    db.exec(`
      CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE groups (gid INTEGER PRIMARY KEY, stream TEXT NOT NULL, grp TEXT NOT NULL, rev INTEGER NOT NULL, ts INTEGER NOT NULL, UNIQUE (stream, grp));
      CREATE TABLE items (gid INTEGER NOT NULL, id TEXT NOT NULL, value TEXT NOT NULL, ord INTEGER NOT NULL, PRIMARY KEY (gid, id));
      CREATE TABLE changes (gid INTEGER NOT NULL, rev INTEGER NOT NULL, ts INTEGER NOT NULL, id TEXT, body TEXT NOT NULL, PRIMARY KEY (gid, rev));
      INSERT INTO store_meta VALUES ('epoch', '00112233aabbccdd');
      INSERT INTO groups VALUES (1, 'todo', 'inbox', 2, 1001);
      INSERT INTO items VALUES (1, 'a', '{"id":"a"}', 0), (1, 'b', '{"id":"b"}', 1);
      INSERT INTO changes VALUES (1, 1, 1000, 'a', '{"type":"create","data":{"id":"a"}}'), (1, 2, 1001, 'b', '{"type":"create","data":{"id":"b"}}');
      PRAGMA user_version = 1;`, (err) => db.close(() => err === null ? resolve() : reject(err)))
  })
  const first = createKvAdapter({ storeMethod: 'file_based', filePath })
  await first.start()
  t.match(await first.snapshotGroup('todo', 'inbox'), { ids: ['a', 'b'], timestamps: [undefined, undefined], rev: 2, epoch: '00112233aabbccdd' },
    'the items are served; their last change is not known, so none is claimed')
  t.equal((await first.readChanges('todo', 'inbox', 0, 10)).changes.length, 2, 'the log is kept')
  const next = await first.set('todo', 'inbox', 'b', { id: 'b', n: 1 })
  t.equal(next.event!.rev, 3)
  await first.close()
  const second = createKvAdapter({ storeMethod: 'file_based', filePath })
  await second.start()
  t.teardown(() => second.close())
  t.match(await second.snapshotGroup('todo', 'inbox'), { ids: ['a', 'b'], timestamps: [undefined, next.event!.timestamp], rev: 3 }, 'a new write is stamped')
  t.same(await query(filePath, 'PRAGMA user_version'), [{ user_version: 2 }])
})

t.test('the revision floor of dropped groups survives a restart', async t => {
  const { filePath, first } = await fileStore(t)
  await first.close()
  const changeLog = { maxChanges: 100, maxAgeMs: 50 }
  const adapter = createKvAdapter({ storeMethod: 'file_based', filePath, changeLog })
  await adapter.start()
  await adapter.publish('s', 'gone', null, { type: 'event', event: { type: 'e', data: null } })
  const last = await adapter.publish('s', 'gone', null, { type: 'event', event: { type: 'e', data: null } })
  await until(() => Date.now() > last.timestamp + 100, 'the log to age out')
  await adapter.set('s', 'kept', 'a', { id: 'a' })
  await until(async () => (await query(filePath, "SELECT gid FROM groups WHERE grp = 'gone'")).length === 0, 'the group to be dropped')
  await adapter.close()
  const again = createKvAdapter({ storeMethod: 'file_based', filePath, changeLog })
  await again.start()
  t.teardown(() => again.close())
  const back = await again.publish('s', 'gone', null, { type: 'event', event: { type: 'e', data: null } })
  t.ok(back.rev > last.rev, `after a restart too, a group that comes back goes on above its old revisions (${back.rev} > ${last.rev})`)
  t.same(await again.listGroups('s'), ['kept'])
})
