// Socket.IO 4.8, websocket transport only, no compression, in-memory adapter, one room per group.
import http from 'node:http'
import { Server } from 'socket.io'
import {
  FANOUT_GROUP, makePayload, makeItem, startControl, announceReady, syncPublishHandlers, wsNativeAddons
} from '../lib/common.mjs'

const httpServer = http.createServer()
const io = new Server(httpServer, {
  transports: ['websocket'],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false
})
// as in the pilot: do not keep the upgrade request alive for every connection
io.engine.on('connection', (rawSocket) => { rawSocket.request = null })

const seeded = new Map() // room -> array of items (the sync baseline emits the same array on join)
io.on('connection', (socket) => {
  socket.on('join', (arg) => {
    const room = arg && arg.room
    if (typeof room !== 'string') return
    socket.join(room)
    const items = seeded.get(room)
    if (items) socket.emit('sync', items)
    else socket.emit('joined', room)
  })
  socket.on('leave', (arg) => { if (arg && typeof arg.room === 'string') socket.leave(arg.room) })
})

function publishOne (seq, ts) {
  io.to(FANOUT_GROUP).emit('update', makePayload(seq, ts))
}

const handlers = {
  ...syncPublishHandlers(publishOne),
  seed: async ({ group, count }) => {
    const items = []
    for (let i = 0; i < count; i++) items.push(makeItem(i))
    seeded.set(group, items)
    return { count }
  },
  subscribers: async () => ({ count: io.of('/').sockets.size })
}

await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve))
const addons = await wsNativeAddons(import.meta.resolve('ws'))
const info = { system: 'socketio', protocol: 'eio', wsPort: httpServer.address().port, wsPath: '/socket.io/', addons }
const ctl = await startControl(handlers, info)
announceReady({ ...info, ctlPort: ctl.address().port })
