// Motia's own server (@motiadev/core 0.17.14-beta.196): createServer() with its express app and ws
// socket server. It runs standalone when given an object for its Redis client (the stream path never calls
// it) and a stream factory returning a fresh MemoryStreamAdapter over one shared state object (the shipped
// MemoryStreamAdapterManager creates a new, empty adapter on every call, so state would be lost).
import os from 'node:os'
import fs from 'node:fs'
import path from 'node:path'
import {
  LockedData, createServer, MemoryStreamAdapter, MemoryStateAdapter, NoPrinter, DefaultQueueEventAdapter
} from '@motiadev/core'
import {
  STREAM, FANOUT_GROUP, ITEM_ID, makePayload, makeItem, ticker, nowNs, sleepUntilNs, startControl,
  announceReady, wsNativeAddons
} from '../lib/common.mjs'

process.env.MOTIA_ANALYTICS_DISABLED = 'true'

// a scratch base dir: nothing is written there on the stream path, but keep the repo clean anyway
const baseDir = fs.mkdtempSync(path.join(os.tmpdir(), 'motia-bench-'))
const printer = new NoPrinter()
const redisNeverCalled = {} // the stream path never touches it; the trace/log streams only keep a reference

const lockedData = new LockedData(baseDir, 'memory', printer, redisNeverCalled)
const sharedState = {}
lockedData.createStream({
  filePath: STREAM + '.stream.ts',
  hidden: true, // hidden: no type generation, no printing
  config: {
    name: STREAM,
    baseConfig: {
      storageType: 'custom',
      factory: () => {
        const adapter = new MemoryStreamAdapter(STREAM)
        adapter.state = sharedState
        return adapter
      }
    },
    schema: null
  }
}, { disableTypeCreation: true })

const state = new MemoryStateAdapter()
const motia = createServer(lockedData, state, { isVerbose: false, printer }, { eventAdapter: new DefaultQueueEventAdapter() })
const stream = () => lockedData.getStreams()[STREAM]()

function publishOne (seq, ts) {
  stream().set(FANOUT_GROUP, ITEM_ID, makePayload(seq, ts)).catch(() => {})
}

const handlers = {
  publish: async ({ rate, durationMs, startNs }) => ticker({ rate, durationMs, startNs, onTick: publishOne }),
  burst: async ({ count, startNs }) => {
    await sleepUntilNs(startNs)
    const t0 = nowNs()
    const s = stream()
    for (let i = 0; i < count; i++) await s.set(FANOUT_GROUP, ITEM_ID, makePayload(i, nowNs()))
    return { n: count, elapsedNs: nowNs() - t0 }
  },
  seed: async ({ group, count }) => {
    const s = stream()
    for (let i = 0; i < count; i++) await s.set(group, 'item-' + i, makeItem(i))
    return { count }
  },
  prepare: async ({ group }) => {
    await stream().set(group || FANOUT_GROUP, ITEM_ID, makePayload(-1, 0))
    return {}
  }
}

await new Promise((resolve) => motia.server.listen(0, '127.0.0.1', resolve))
const addons = await wsNativeAddons(import.meta.resolve('ws'))
const info = { system: 'motia', protocol: 'motia', wsPort: motia.server.address().port, wsPath: '/', addons }
const ctl = await startControl(handlers, info)
announceReady({ ...info, ctlPort: ctl.address().port })
process.on('exit', () => { try { fs.rmSync(baseDir, { recursive: true, force: true }) } catch {} })
