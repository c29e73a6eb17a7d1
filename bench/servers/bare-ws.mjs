// The practical limit: a bare `ws` server that, on each tick, serialises ONE frame (the same envelope, so
// the same size, as the Motia protocol's `update`) and sends that buffer to every client.
import { WebSocketServer } from 'ws'
import {
  STREAM, FANOUT_GROUP, ITEM_ID, makePayload, startControl, announceReady, syncPublishHandlers,
  wsNativeAddons
} from '../lib/common.mjs'

const clients = new Set()
const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, clientTracking: false })
wss.on('connection', (ws) => {
  clients.add(ws)
  ws.on('close', () => clients.delete(ws))
  ws.on('error', () => {})
})

const SEND_OPTS = { binary: false }
function frame (seq, ts) {
  return Buffer.from(JSON.stringify({
    type: 'stream',
    timestamp: Date.now(),
    streamName: STREAM,
    groupId: FANOUT_GROUP,
    id: ITEM_ID,
    event: { type: 'update', data: makePayload(seq, ts) },
    rev: seq + 2 // fastify-streams appends the group revision: keep the frame the same size
  }))
}
function publishOne (seq, ts) {
  const buf = frame(seq, ts)
  for (const c of clients) c.send(buf, SEND_OPTS)
}

const handlers = {
  ...syncPublishHandlers(publishOne),
  subscribers: async () => ({ count: clients.size })
}

await new Promise((resolve) => wss.on('listening', resolve))
const addons = await wsNativeAddons(import.meta.resolve('ws'))
const info = { system: 'bare-ws', protocol: 'ws', wsPort: wss.address().port, wsPath: '/', addons }
const ctl = await startControl(handlers, info)
announceReady({ ...info, ctlPort: ctl.address().port })
