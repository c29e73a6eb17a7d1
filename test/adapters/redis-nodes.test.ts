// Two Fastify apps on one real redis-server serve one set of streams: writers on both nodes update the same
// items concurrently; every subscriber on every node ends with exactly the stored values, and each saw one
// order of events per group, the same on both nodes, with no duplicates and consecutive revisions.
import t from 'tap'
import { Stream, type StreamGroupSubscription, type StreamItemSubscription } from '@motiadev/stream-client-node'
import { RawClient, serve, until, type Envelope, type Served } from '../helpers/app.js'
import { startRedisServer } from '../helpers/redis-server.js'

const REDIS = 'modules::streams::adapters::RedisAdapter'
const STREAM = 'race'
const GROUPS = ['g1', 'g2']
const IDS = ['a', 'b', 'c', 'd', 'e', 'f']
const WRITES_PER_WORKER = 60
const WORKERS_PER_NODE = 4

type Item = { id: string, [key: string]: unknown }

function byId (items: unknown): Array<[string, string]> {
  return (items as Item[]).map((item): [string, string] => [item.id, JSON.stringify(item)]).sort((x, y) => x[0] < y[0] ? -1 : 1)
}

async function openStream (url: string): Promise<Stream> {
  const stream = new Stream(url)
  // The stock client joins on open; close() before open would throw inside ws.
  await until(() => (stream as unknown as { ws: { isOpen(): boolean } }).ws.isOpen(), 'the stock client to connect')
  return stream
}

/** The change frames of `group` after its group sync, as (rev, timestamp) pairs; and that sync's rev. */
function changesAfterSync (frames: Envelope[], group: string): { syncRev: number, changes: Array<[number, number]> } {
  const ofGroup = frames.filter(f => f.streamName === STREAM && f.groupId === group)
  const sync = ofGroup.findIndex(f => f.event.type === 'sync' && f.id === null)
  if (sync < 0) throw new Error(`no sync for ${group}`)
  const changes = ofGroup.slice(sync + 1)
    .filter(f => ['create', 'update', 'delete'].includes(f.event.type))
    .map((f): [number, number] => [f.rev as number, f.timestamp])
  return { syncRev: ofGroup[sync].rev as number, changes }
}

t.test('two nodes on one Redis, concurrent writers on the same items', async t => {
  const redis = await startRedisServer()
  t.teardown(() => redis.close())
  const nodes: Served[] = []
  for (let i = 0; i < 2; i++) {
    const served = await serve({ adapter: { class: REDIS, config: { redis_url: redis.url } } })
    t.teardown(() => served.app.close())
    nodes.push(served)
  }

  // Some state before anyone subscribes, so the syncs are not empty.
  for (const group of GROUPS) {
    for (const id of IDS.slice(0, 3)) await nodes[0].app.streams.set(STREAM, group, id, { v: 'seed' })
  }

  // On each node: a stock client (both groups and one item) and a raw client recording frames.
  const stocks: Array<{ node: number, groups: Map<string, StreamGroupSubscription<Item>>, item: StreamItemSubscription<Item> }> = []
  const raws: RawClient[] = []
  for (const [index, { url }] of nodes.entries()) {
    const stream = await openStream(url)
    t.teardown(() => stream.close())
    const groups = new Map(GROUPS.map(group => [group, stream.subscribeGroup<Item>(STREAM, group)]))
    stocks.push({ node: index, groups, item: stream.subscribeItem<Item>(STREAM, GROUPS[0], 'a') })
    const raw = await RawClient.open(url)
    t.teardown(() => raw.close())
    for (const group of GROUPS) raw.join(STREAM, group)
    raws.push(raw)
  }
  await until(() => raws.every(raw => raw.of('sync').length === GROUPS.length), 'the raw syncs')
  await until(() => stocks.every(s => [...s.groups.values()].every(sub => sub.getState().length === 3)), 'the stock syncs')

  // Writers: WORKERS_PER_NODE concurrent loops on each node, all on the same items, set/update/delete mixed.
  let acknowledged = 0
  // mulberry32: a fixed seed, so a failure replays.
  let seed = 7
  const random = (n: number): number => {
    seed = (seed + 0x6D2B79F5) | 0
    let x = Math.imul(seed ^ (seed >>> 15), seed | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return (((x ^ (x >>> 14)) >>> 0) / 4294967296 * n) | 0
  }
  async function worker (node: number, worker: number): Promise<void> {
    const { streams } = nodes[node].app
    for (let i = 0; i < WRITES_PER_WORKER; i++) {
      const group = GROUPS[random(GROUPS.length)]
      const id = IDS[random(IDS.length)]
      const pick = random(10)
      if (pick < 5) await streams.set(STREAM, group, id, { v: `${node}.${worker}.${i}`, node })
      else if (pick < 8) await streams.update(STREAM, group, id, [{ type: 'increment', path: 'hits', by: 1 }, { type: 'set', path: 'last', value: node }])
      else await streams.delete(STREAM, group, id)
      acknowledged++
    }
  }
  const started = Date.now()
  await Promise.all(nodes.flatMap((_, node) => Array.from({ length: WORKERS_PER_NODE }, (_, w) => worker(node, w))))
  t.equal(acknowledged, 2 * WORKERS_PER_NODE * WRITES_PER_WORKER, `${acknowledged} writes acknowledged in ${Date.now() - started} ms`)

  // Both nodes read one state; a late subscriber's sync tells the group's final revision.
  const stored = new Map<string, unknown[]>()
  const finalRev = new Map<string, number>()
  const late = await RawClient.open(nodes[1].url)
  t.teardown(() => late.close())
  for (const group of GROUPS) {
    const fromA = await nodes[0].app.streams.getGroup(STREAM, group)
    t.same(await nodes[1].app.streams.getGroup(STREAM, group), fromA, `${group}: both nodes read the same state in the same order`)
    stored.set(group, fromA)
    late.join(STREAM, group)
  }
  await until(() => late.of('sync').length === GROUPS.length, 'the late syncs')
  for (const frame of late.of('sync')) finalRev.set(frame.groupId, frame.rev as number)

  // Every stock subscriber on every node ends with exactly the stored values.
  const storedItem = await nodes[0].app.streams.get(STREAM, GROUPS[0], 'a')
  await until(() => stocks.every(s =>
    GROUPS.every(group => JSON.stringify(byId(s.groups.get(group)!.getState())) === JSON.stringify(byId(stored.get(group)))) &&
    JSON.stringify(s.item.getState()) === JSON.stringify(storedItem)
  ), 'the stock subscribers to reach the stored state', 10_000).catch(() => {})
  for (const s of stocks) {
    for (const group of GROUPS) t.same(byId(s.groups.get(group)!.getState()), byId(stored.get(group)), `node ${s.node} stock ${group} holds the stored items`)
    t.same(s.item.getState(), storedItem, `node ${s.node} stock item subscription holds the stored item`)
  }

  // Raw subscribers: one order per group, the same on both nodes; consecutive revisions, no duplicates.
  await until(() => raws.every(raw => GROUPS.every(group => {
    const { changes } = changesAfterSync(raw.frames, group)
    return changes.length > 0 && changes[changes.length - 1][0] === finalRev.get(group)
  })), 'the raw subscribers to get every change', 10_000).catch(() => {})
  for (const group of GROUPS) {
    const seen = raws.map(raw => changesAfterSync(raw.frames, group))
    for (const [node, { syncRev, changes }] of seen.entries()) {
      const revs = changes.map(([rev]) => rev)
      t.same(revs, Array.from({ length: finalRev.get(group)! - syncRev }, (_, i) => syncRev + 1 + i),
        `node ${node} ${group}: revisions ${syncRev + 1}..${finalRev.get(group)} once each, in order`)
      t.ok(changes.every(([, ts], i) => i === 0 || ts > changes[i - 1][1]), `node ${node} ${group}: timestamps strictly rise`)
      t.equal(new Set(changes.map(([rev, ts]) => `${rev}@${ts}`)).size, changes.length, `node ${node} ${group}: no duplicate frame`)
    }
    t.equal(seen[0].syncRev, seen[1].syncRev, `${group}: both nodes synced at the same revision`)
    t.same(seen[1].changes, seen[0].changes, `${group}: both nodes saw the same (rev, timestamp) sequence`)
    t.ok(seen[0].changes.length > 100, `${group}: ${seen[0].changes.length} changes observed`)
  }
  // The raw frames replayed over the sync give the stored state too.
  for (const [node, raw] of raws.entries()) {
    for (const group of GROUPS) {
      const frames = raw.frames.filter(f => f.groupId === group)
      const sync = frames.findIndex(f => f.event.type === 'sync')
      const state = new Map<string, unknown>((frames[sync].event.data as Item[]).map(item => [item.id, item]))
      for (const f of frames.slice(sync + 1)) {
        if (f.event.type === 'delete') state.delete(f.id!)
        else if (f.event.type === 'create' || f.event.type === 'update') state.set(f.id!, f.event.data)
      }
      t.same(byId([...state.values()]), byId(stored.get(group)), `node ${node} ${group}: replaying the raw frames gives the stored state`)
    }
  }
  t.equal(raws[0].closeCode, null)
  t.equal(raws[1].closeCode, null)
})
