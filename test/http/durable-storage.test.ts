// Where durable streams live: inside the configured adapter, on its own connections. A Redis adapter with
// durable streams opens no more Redis connections than without; a SQLite one no more handles on its file;
// two nodes on one Redis append to one stream at once without a lock, losing and repeating nothing; appends handed
// in together share one commit, on SQLite and on Redis.
import { readdir, readlink, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import sqlite3 from 'sqlite3'
import { DurableStream, IdempotentProducer } from '@durable-streams/client'
import { serve } from '../helpers/app.js'
import { replyText, startRedisServer, type RedisServer } from '../helpers/redis-server.js'
import { createKvAdapter, type StreamsOptions } from '../../lib/index.js'
import type { StreamAdapter } from '../../lib/adapters/adapter.js'
import { MAX_GROUP_APPEND_BYTES } from '../../lib/http/stream-engine.js'

async function httpApp (options: StreamsOptions) {
  const served = await serve(options)
  return { app: served.app, base: served.url.replace('ws:', 'http:').slice(0, -1) }
}

/** Two nodes with durable streams on a redis-server of their own; all of it closed after the test. */
async function redisNodes (test: { teardown: (fn: () => unknown) => void }, durable: StreamsOptions['durable_streams'] = true) {
  const redis = await startRedisServer()
  test.teardown(() => redis.close())
  const adapter = { class: 'modules::streams::adapters::RedisAdapter' as const, config: { redis_url: redis.url } }
  const nodes = [await httpApp({ adapter, durable_streams: durable }), await httpApp({ adapter, durable_streams: durable })]
  test.teardown(() => Promise.all(nodes.map(node => node.app.close())))
  return { redis, nodes }
}

/** Connections the redis-server has open, the one asking excluded. */
async function redisClients (redis: RedisServer): Promise<number> {
  const list = replyText(await redis.command('CLIENT', 'LIST')).trim().split('\n')
  return list.length - 1
}

/** This process's open descriptors on `file` itself (not its -wal or -shm companions). */
async function handlesOn (file: string): Promise<number> {
  let count = 0
  for (const fd of await readdir('/proc/self/fd')) {
    if (await readlink(`/proc/self/fd/${fd}`).catch(() => '') === file) count++
  }
  return count
}

/** Writes, reads and tails a stream, so every part of the store that opens anything has done so. */
async function exercise (base: string, name: string): Promise<void> {
  const url = `${base}/v1/stream/${name}`
  await fetch(url, { method: 'PUT', headers: { 'content-type': 'text/plain' } })
  await fetch(url, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'hello' })
  const controller = new AbortController()
  const live = await fetch(`${url}?offset=-1&live=sse`, { signal: controller.signal })
  await live.body!.getReader().read()
  controller.abort()
  await fetch(`${url}?offset=-1`)
}

t.test('Redis: durable streams use the adapter\'s connections, opening none of their own', async t => {
  const redis = await startRedisServer()
  t.teardown(() => redis.close())
  const adapter = { class: 'modules::streams::adapters::RedisAdapter' as const, config: { redis_url: redis.url } }
  const alone = await httpApp({ adapter })
  const adapterOnly = await redisClients(redis)
  await alone.app.close()
  t.equal(await redisClients(redis), 0, 'the adapter alone closed what it opened')

  const served = await httpApp({ adapter, durable_streams: true })
  await exercise(served.base, 'counted')
  t.equal(await redisClients(redis), adapterOnly, `${adapterOnly} connections, as the adapter alone opens`)
  await served.app.close()
  t.equal(await redisClients(redis), 0, 'closing the app closed them all')
})

t.test('SQLite: durable streams use the adapter\'s connection, opening no handle of their own on the file', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'ds-storage-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'streams.db')
  const adapter = { class: 'modules::streams::adapters::KvStore' as const, config: { store_method: 'file_based' as const, file_path: file } }
  const alone = await httpApp({ adapter })
  const adapterOnly = await handlesOn(file)
  t.ok(adapterOnly > 0, 'the adapter has the file open')
  await alone.app.close()

  const served = await httpApp({ adapter, durable_streams: true })
  await exercise(served.base, 'counted')
  t.equal(await handlesOn(file), adapterOnly, `${adapterOnly} handle(s) on the file, as the adapter alone opens`)
  await served.app.close()
  t.equal(await handlesOn(file), 0, 'closing the app closed them')
})

t.test('SQLite: appends handed in together share one commit; a refused one leaves the others, and all survive a restart', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'ds-storage-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const adapter = { class: 'modules::streams::adapters::KvStore' as const, config: { store_method: 'file_based' as const, file_path: join(dir, 'streams.db') } }
  const first = await httpApp({ adapter, durable_streams: true })
  const durable = first.app.streams.durable!
  await durable.create('grouped', { contentType: 'application/json' })
  await durable.create('shut', { contentType: 'application/json', closed: true })
  // Durable-stream transactions end with a COMMIT statement of their own (the items' batches commit inside one
  // exec); counted whether it runs through the connection or as a prepared statement.
  const run = sqlite3.Database.prototype.run
  const runStatement = sqlite3.Statement.prototype.run
  let commits = 0
  // Each statement is a trip to sqlite3's thread pool: the entries of a group go in a few, not one each.
  let entryStatements = 0
  sqlite3.Database.prototype.run = function (this: sqlite3.Database, sql: string, ...rest: unknown[]) {
    if (sql === 'COMMIT') commits++
    if (sql.startsWith('INSERT INTO ds_entries')) entryStatements++
    return run.call(this, sql, ...rest as [])
  } as typeof run
  sqlite3.Statement.prototype.run = function (this: sqlite3.Statement & { sql: string }, ...rest: unknown[]) {
    if (this.sql === 'COMMIT') commits++
    if (this.sql.startsWith('INSERT INTO ds_entries')) entryStatements++
    return runStatement.call(this, ...rest as [])
  } as typeof runStatement
  const outcomes = await Promise.allSettled(Array.from({ length: 72 }, async (_, n) =>
    n % 9 === 8 ? await durable.append('shut', { n }) : await durable.append('grouped', { n })))
  const groupCommits = commits
  const groupEntryStatements = entryStatements
  // Big appends handed in together go in several transactions: the first is not kept waiting behind all of them.
  await durable.create('big', { contentType: 'text/plain' })
  const size = Math.floor(MAX_GROUP_APPEND_BYTES / 2) + 1
  commits = 0
  await Promise.all(['a', 'b', 'c', 'd'].map(letter => durable.append('big', letter.repeat(size))))
  const bigCommits = commits
  sqlite3.Database.prototype.run = run
  sqlite3.Statement.prototype.run = runStatement
  t.ok(bigCommits >= 4, `4 appends of ${size} bytes, ${bigCommits} transactions: no two of them in one of at most ${MAX_GROUP_APPEND_BYTES} bytes`)
  t.equal((await durable.read('big', { maxBytes: 8 * size })).data?.toString(), ['a', 'b', 'c', 'd'].map(letter => letter.repeat(size)).join(''), 'all stored, in order')
  const refused = outcomes.filter(outcome => outcome.status === 'rejected')
  t.equal(refused.length, 8, 'the appends to the closed stream are refused')
  t.ok(refused.every(outcome => (outcome.reason as { code?: string }).code === 'STREAMS_ERR_STREAM_CLOSED'), 'each with its own error')
  t.ok(groupCommits >= 1 && groupCommits <= 4, `72 appends, ${groupCommits} commit(s)`)
  t.ok(groupEntryStatements >= 1 && groupEntryStatements <= 16, `64 entries written by ${groupEntryStatements} INSERT statement(s)`)
  const expected = Array.from({ length: 72 }, (_, n) => n).filter(n => n % 9 !== 8)
  const messages = async (app: typeof first.app) => ((await app.streams.durable!.read('grouped')).messages as Array<{ n: number }>).map(m => m.n)
  t.same(await messages(first.app), expected, 'the others are all there, in the order they were handed in')
  await first.app.close()
  const second = await httpApp({ adapter, durable_streams: true })
  t.teardown(() => second.app.close())
  t.same(await messages(second.app), expected, 'every acknowledged append is in the file')
})

t.test('SQLite: an operation sees what the operations before it in its transaction wrote', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'ds-storage-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const adapter = { class: 'modules::streams::adapters::KvStore' as const, config: { store_method: 'file_based' as const, file_path: join(dir, 'streams.db') } }
  const { app } = await httpApp({ adapter, durable_streams: true })
  t.teardown(() => app.close())
  const durable = app.streams.durable!
  await durable.create('seen', { contentType: 'text/plain' })
  await durable.append('seen', 'a')
  // Handed in together, so they share one transaction.
  const [, read, , head] = await Promise.all([durable.append('seen', 'b'), durable.read('seen'), durable.append('seen', 'c', { close: true }), durable.head('seen')])
  t.equal(read.data?.toString(), 'ab', 'the read has the append before it')
  t.equal(read.upToDate, true, 'and is at the tail it had then')
  t.same([head.offset, head.closed], [(await durable.read('seen')).nextOffset, true], 'the head after the close sees it')
  t.equal((await durable.read('seen')).data?.toString(), 'abc')
})

t.test('a borrowed adapter keeps its durable streams when the app closes; they close with the adapter', async t => {
  const adapter = createKvAdapter()
  await adapter.start()
  const first = await httpApp({ adapter, durable_streams: true })
  const url = `${first.base}/v1/stream/kept`
  await fetch(url, { method: 'PUT', headers: { 'content-type': 'text/plain' }, body: 'a' })
  await first.app.close()

  const second = await httpApp({ adapter, durable_streams: true })
  t.equal(await (await fetch(`${second.base}/v1/stream/kept`)).text(), 'a', 'the next app on the adapter reads the stream')
  await second.app.close()
  const store = await adapter.durableStreamStore()
  t.equal((await store.head('kept')).tail, 1, 'the store is still open once both apps closed')
  await adapter.close()
  await t.rejects(adapter.durableStreamStore(), { code: 'STREAMS_ERR_CLOSED' }, 'and is gone with the adapter')
})

t.test('an adapter without durableStreamStore() cannot serve durable streams: the app refuses to start', async t => {
  const kv = createKvAdapter()
  await kv.start()
  t.teardown(() => kv.close())
  // A user adapter: every contract method, and no durable stream store.
  const custom = Object.fromEntries(['get', 'set', 'delete', 'getGroup', 'listGroups', 'listAll', 'update', 'publish', 'snapshotGroup', 'snapshotItem', 'subscribe', 'close']
    .map(method => [method, (kv as unknown as Record<string, (...args: unknown[]) => unknown>)[method].bind(kv)])) as unknown as StreamAdapter
  await t.rejects(serve({ adapter: custom, durable_streams: true }), { code: 'STREAMS_ERR_INVALID_OPTION', key: 'durable_streams' })
})

t.test('Redis: two nodes append to one stream at once: nothing lost or repeated, offsets strictly increasing', async t => {
  const { nodes } = await redisNodes(t)
  const path = '/v1/stream/shared'
  await DurableStream.create({ url: `${nodes[0].base}${path}`, contentType: 'application/json' })

  // Raw POSTs from both nodes at once, each answered with the stream's new tail.
  const PER_NODE = 60
  const tails: string[] = []
  const statuses = new Set<number>()
  await Promise.all(nodes.flatMap((node, n) => Array.from({ length: PER_NODE }, async (_, i) => {
    const response = await fetch(`${node.base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ node: n, i }) })
    statuses.add(response.status)
    tails.push(response.headers.get('stream-next-offset')!)
  })))
  t.same([...statuses], [204], 'every raw POST was accepted')
  t.equal(new Set(tails).size, tails.length, 'every append got a tail of its own')

  // Two idempotent producers, one per node, with batches in flight at once, retrying on any error.
  const MESSAGES = 150
  const errors: Error[] = []
  const producers = nodes.map(async (node, n) => {
    const handle = new DurableStream({ url: `${node.base}${path}`, contentType: 'application/json' })
    const producer = new IdempotentProducer(handle, `worker-${n}`, { lingerMs: 1, maxInFlight: 4, onError: (err) => errors.push(err) })
    for (let i = 0; i < MESSAGES; i++) {
      producer.append(JSON.stringify({ producer: n, i }))
      if (i % 10 === 0) await new Promise(resolve => setImmediate(resolve))
    }
    await producer.flush()
  })
  await Promise.all(producers)
  t.same(errors, [], 'the producers reported no error')

  const stored = await (await fetch(`${nodes[1].base}${path}`)).json() as Array<{ node?: number, producer?: number, i: number }>
  t.equal(stored.length, 2 * PER_NODE + 2 * MESSAGES, 'every message stored, none twice')
  for (const n of [0, 1]) {
    t.same(stored.filter(m => m.node === n).map(m => m.i).sort((a, b) => a - b), Array.from({ length: PER_NODE }, (_, i) => i), `node ${n}'s raw POSTs, each once`)
    t.same(stored.filter(m => m.producer === n).map(m => m.i), Array.from({ length: MESSAGES }, (_, i) => i), `producer ${n}'s messages, each once, in order`)
  }
  const sorted = [...tails].sort()
  t.same(sorted.map(tail => Number(tail.split('_')[1])), Array.from({ length: 2 * PER_NODE }, (_, i) => i + 1), 'the raw POSTs got the tails 1, 2, … in some order: strictly increasing offsets')
})

/** Commit scripts the redis-server has run so far (each durable-stream transaction that writes runs one). */
async function commitScripts (redis: RedisServer): Promise<number> {
  const stats = replyText(await redis.command('INFO', 'commandstats'))
  return [...stats.matchAll(/^cmdstat_(?:evalsha|eval):calls=(\d+)/gm)].reduce((sum, match) => sum + Number(match[1]), 0)
}

t.test('Redis: appends handed in together share one commit; a refused one leaves the others', async t => {
  const { redis, nodes: [node, other] } = await redisNodes(t)
  const durable = node.app.streams.durable!
  await durable.create('grouped', { contentType: 'application/json' })
  const before = await commitScripts(redis)
  // Every ninth append repeats the first Stream-Seq, so it is refused, in the middle of the others.
  const seq = (n: number) => String(n % 9 === 8 ? 0 : n).padStart(3, '0')
  const outcomes = await Promise.allSettled(Array.from({ length: 64 }, (_, n) => durable.append('grouped', { n }, { streamSeq: seq(n) })))
  const commits = await commitScripts(redis) - before
  const refused = outcomes.filter(outcome => outcome.status === 'rejected')
  t.equal(refused.length, 7, 'the appends repeating a Stream-Seq are refused')
  t.ok(refused.every(outcome => (outcome.reason as { code?: string }).code === 'STREAMS_ERR_STREAM_SEQ'), 'each with its own error')
  t.ok(commits >= 1 && commits <= 4, `64 appends, ${commits} commit(s)`)
  const expected = Array.from({ length: 64 }, (_, n) => n).filter(n => n % 9 !== 8)
  const stored = (await other.app.streams.durable!.read('grouped')).messages as Array<{ n: number }>
  t.same(stored.map(message => message.n), expected, 'the others are all there, in the order they were handed in, on the other node too')

  // Big appends handed in together go in several scripts: one script call stays far below what Redis takes.
  await durable.create('big', { contentType: 'text/plain' })
  await durable.append('big', '<')
  const size = Math.floor(MAX_GROUP_APPEND_BYTES / 2) + 1
  const bigBefore = await commitScripts(redis)
  await Promise.all(['a', 'b', 'c', 'd'].map(letter => durable.append('big', letter.repeat(size))))
  const bigCommits = await commitScripts(redis) - bigBefore
  t.ok(bigCommits >= 4, `4 appends of ${size} bytes, ${bigCommits} transactions: no two of them in one of at most ${MAX_GROUP_APPEND_BYTES} bytes`)
  t.equal((await other.app.streams.durable!.read('big', { maxBytes: 8 * size })).data?.toString(), '<' + ['a', 'b', 'c', 'd'].map(letter => letter.repeat(size)).join(''), 'all stored, in order')
})

t.test('Redis: a node appending from what it remembers of a stream never misses what another node changed', async t => {
  const { nodes: [first, second] } = await redisNodes(t)
  const other = second.app.streams.durable!
  // Appends on the first node as a client sends them (no other request on the stream in between).
  const post = (name: string, body: string, headers: Record<string, string> = {}) =>
    fetch(`${first.base}/v1/stream/${name}`, { method: 'POST', headers: { 'content-type': 'text/plain', ...headers }, body })
  const text = async (name: string) => (await other.read(name)).data!.toString()
  const replace = async (name: string) => {
    await other.delete(name)
    await other.create(name, { contentType: 'text/plain' })
  }

  await other.create('log', { contentType: 'text/plain' })
  await post('log', 'a1,')
  await other.append('log', 'b1,')
  const after = await post('log', 'a2,')
  t.equal(await text('log'), 'a1,b1,a2,', 'an append after the other node\'s lands after it')
  t.equal(after.headers.get('stream-next-offset'), (await other.head('log')).offset, 'and answers the stream\'s real tail')

  // Deleted and created again on the other node: the first node's appends go to the new stream.
  await replace('log')
  t.equal((await post('log', 'fresh')).status, 204)
  t.equal(await text('log'), 'fresh', 'into the new stream, not refused as gone')

  // Closed through the first node, then replaced by an open stream: not refused as closed.
  await other.create('shut', { contentType: 'text/plain' })
  await post('shut', 'last', { 'stream-closed': 'true' })
  await replace('shut')
  t.equal((await post('shut', 'reopened')).status, 204)
  t.equal(await text('shut'), 'reopened', 'an append to the new stream is taken')

  // A producer's append seen by the first node, then the stream replaced: the same append is new data there.
  const producer = { 'producer-id': 'writer', 'producer-epoch': '0', 'producer-seq': '0' }
  await other.create('produced', { contentType: 'text/plain' })
  t.equal((await post('produced', 'one', producer)).status, 200)
  await replace('produced')
  t.equal((await post('produced', 'one', producer)).status, 200, 'new data (200), not answered as a duplicate (204)')
  t.equal(await text('produced'), 'one', 'and stored')
})

t.test('Redis: a live reader whose node lost its subscriber connection reads what was appended meanwhile', async t => {
  const { redis, nodes: [reading, writing] } = await redisNodes(t, { long_poll_timeout_ms: 30_000 })
  const path = '/v1/stream/missed'
  const created = await fetch(`${reading.base}${path}`, { method: 'PUT', headers: { 'content-type': 'text/plain' } })
  const tail = created.headers.get('stream-next-offset')!
  const started = Date.now()
  const poll = fetch(`${reading.base}${path}?offset=${tail}&live=long-poll`)
  await new Promise(resolve => setTimeout(resolve, 200))
  // Every subscriber connection drops; the append's message goes out while they are away.
  await redis.command('CLIENT', 'KILL', 'TYPE', 'pubsub')
  t.equal((await fetch(`${writing.base}${path}`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'while away' })).status, 204)
  const answer = await poll
  t.equal(answer.status, 200)
  t.equal(await answer.text(), 'while away')
  t.ok(Date.now() - started < 10_000, 'once the subscriber was back, not at the long-poll\'s time-out')
})

t.test('SQLite: a statement that cannot be prepared answers an error, not silence, and works once it can', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'ds-storage-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'streams.db')
  const adapter = { class: 'modules::streams::adapters::KvStore' as const, config: { store_method: 'file_based' as const, file_path: file } }
  const served = await httpApp({ adapter, durable_streams: true })
  t.teardown(() => served.app.close())
  const url = `${served.base}/v1/stream/prepared`
  t.equal((await fetch(url, { method: 'PUT', headers: { 'content-type': 'application/json' } })).status, 201)
  const other = new sqlite3.Database(file)
  const run = (sql: string): Promise<void> => new Promise((resolve, reject) => other.run(sql, (err) => err === null ? resolve() : reject(err)))
  // No producer has appended yet: the producers' statements are not prepared, and now cannot be.
  await run('DROP TABLE ds_producers')
  const producerAppend = (): Promise<Response> => fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'producer-id': 'p', 'producer-epoch': '0', 'producer-seq': '0' },
    body: '[1]',
    signal: AbortSignal.timeout(5000)
  })
  const failed = await producerAppend()
  t.equal(failed.status, 500, 'answered, with an error')
  t.same(await failed.json(), { code: 'STREAMS_ERR_INTERNAL', message: 'Internal error' }, 'the driver\'s error is logged, not shown')
  await run('CREATE TABLE ds_producers (stream_id TEXT NOT NULL, producer_id TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (stream_id, producer_id)) WITHOUT ROWID')
  await new Promise<void>(resolve => other.close(() => resolve()))
  t.equal((await producerAppend()).status, 200, 'prepared again once the table is back')
  t.same(await (await fetch(`${url}?offset=-1`)).json(), [1])
})
