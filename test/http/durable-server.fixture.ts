// Child process for test/http/durable-restart.test.ts: an app serving durable streams on the adapter given as
// JSON, on the given port (0: any); prints `listening <port>` once it accepts requests. Killed, never closed.
import Fastify from 'fastify'
import streams from '../../lib/index.js'

const [adapter, port = '0'] = process.argv.slice(2)
const app = Fastify({ logger: false })
await app.register(streams, { adapter: JSON.parse(adapter), durable_streams: true })
await app.listen({ port: Number(port), host: '127.0.0.1' })
const address = app.server.address()
process.stdout.write(`listening ${typeof address === 'object' && address !== null ? address.port : port}\n`)
