// fastify-streams: Fastify + the plugin from the repo's build output (dist/, made by `npm run build`).
// BENCH_CONFIG (JSON): { adapter: 'memory' | 'sqlite' | 'redis', sqlitePath?, redisUrl?, path? }
// Fan-out publishes are app.streams.set() of one item, so subscribers get `update` events.
import Fastify from 'fastify'
import { createRequire } from 'node:module'
import { pathToFileURL, fileURLToPath } from 'node:url'
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import {
  STREAM, FANOUT_GROUP, ITEM_ID, makePayload, makeItem, ticker, nowNs, sleepUntilNs, startControl,
  announceReady, closedLoop, wsNativeAddons
} from '../lib/common.mjs'

const cfg = JSON.parse(process.env.BENCH_CONFIG || '{}')
const distUrl = new URL('../../dist/index.js', import.meta.url)
const { default: streams } = await import(distUrl.href)

let adapter
if (cfg.adapter === 'sqlite') {
  adapter = { class: 'modules::streams::adapters::KvStore', config: { store_method: 'file_based', file_path: cfg.sqlitePath } }
} else if (cfg.adapter === 'redis') {
  adapter = { class: 'modules::streams::adapters::RedisAdapter', config: { redis_url: cfg.redisUrl } }
} else {
  adapter = { class: 'modules::streams::adapters::KvStore', config: { store_method: 'in_memory' } }
}

const app = Fastify({ logger: false })
// The load generator opens up to 10 000 sockets from one address: above the default connection limits.
await app.register(streams, { adapter, max_connections: 100_000, max_connections_per_ip: 100_000, ...(cfg.path ? { path: cfg.path } : {}) })

let errors = 0
let firstError = null
const onError = (err) => {
  errors++
  if (!firstError) firstError = String(err && err.message ? err.message : err)
}
function publishOne (seq, ts) {
  app.streams.set(STREAM, FANOUT_GROUP, ITEM_ID, makePayload(seq, ts)).catch(onError)
}

const handlers = {
  publish: async ({ rate, durationMs, startNs }) => {
    const out = await ticker({ rate, durationMs, startNs, onTick: publishOne })
    return { ...out, errors, firstError }
  },
  burst: async ({ count, startNs }) => {
    await sleepUntilNs(startNs)
    const t0 = nowNs()
    for (let i = 0; i < count; i++) await app.streams.set(STREAM, FANOUT_GROUP, ITEM_ID, makePayload(i, nowNs()))
    return { n: count, elapsedNs: nowNs() - t0 }
  },
  seed: async ({ group, count }) => {
    for (let i = 0; i < count; i++) await app.streams.set(STREAM, group, 'item-' + i, makeItem(i))
    return { count }
  },
  prepare: async ({ group }) => {
    await app.streams.set(STREAM, group || FANOUT_GROUP, ITEM_ID, makePayload(-1, 0))
    return {}
  },
  // write path: `concurrency` writers, each set() awaited, round-robin over `groups` groups (one item each)
  writes: async ({ durationMs, concurrency, groups, prefix = 'w' }) => {
    const names = []
    for (let g = 0; g < groups; g++) names.push(prefix + g)
    return closedLoop({
      durationMs,
      concurrency,
      fn: (i) => app.streams.set(STREAM, names[i % groups], ITEM_ID, makePayload(i, nowNs()))
    })
  },
  getGroup: async ({ group, times = 5 }) => {
    const samples = []
    for (let i = 0; i < times; i++) {
      const t0 = nowNs()
      const items = await app.streams.getGroup(STREAM, group)
      samples.push({ ms: (nowNs() - t0) / 1e6, count: items.length })
    }
    return { samples }
  }
}

await app.listen({ port: 0, host: '127.0.0.1' })
// which ws the plugin's websocket server uses (through @fastify/websocket), and its native addons
let addons = null
try {
  const req = createRequire(createRequire(distUrl).resolve('@fastify/websocket'))
  addons = await wsNativeAddons(pathToFileURL(req.resolve('ws')).href)
} catch (err) {
  addons = { error: String(err.message) }
}
// fingerprint of the build under test (dist/ may be rebuilt between runs)
const distDir = fileURLToPath(new URL('.', distUrl))
const hash = createHash('sha1')
for (const f of fs.readdirSync(distDir, { recursive: true }).filter((f) => f.endsWith('.js')).sort()) hash.update(f).update(fs.readFileSync(distDir + f))
const distHash = hash.digest('hex').slice(0, 12)
const info = { system: 'ours', protocol: 'motia', adapter: cfg.adapter || 'memory', wsPort: app.server.address().port, wsPath: cfg.path || '/', addons, distHash }
const ctl = await startControl(handlers, info)
announceReady({ ...info, ctlPort: ctl.address().port }, () => app.close())
