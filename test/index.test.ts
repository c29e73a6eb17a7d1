// The plugin as an app sees it: registration, the socket path, close, auth and the join/leave triggers.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import websocket from '@fastify/websocket'
import streams, { fastifyStreams, type AuthInput, type StreamsOptions } from '../lib/index.js'
import { checkWsInternals } from '../lib/ws.js'
import { marked, RawClient, serve, waitFor, WARN, type LogLine } from './helpers/app.js'
import { openStock } from './helpers/stock.js'

type JoinInput = { subscription_id: string, stream_name: string, group_id: string, id: string | null, context: unknown }

const pause = (ms: number) => new Promise(resolve => setTimeout(resolve, ms))

async function listen (app: FastifyInstance, path = '/'): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  return `ws://127.0.0.1:${address.port}${path}`
}

/** Opens a socket expected to be refused; resolves with the HTTP status (or 0 when it was not an HTTP refusal). */
async function refusal (url: string, protocols?: string[]): Promise<number> {
  try {
    const client = await RawClient.open(url, protocols)
    await client.close()
  } catch (err) {
    return (err as { statusCode?: number }).statusCode ?? 0
  }
  return -1
}

/** Joins and waits for the one answer (sync or unauthorized). */
async function answer (client: RawClient, stream: string, group: string, id?: string): Promise<string> {
  const before = client.frames.length
  client.join(stream, group, id)
  await waitFor(() => client.frames.length > before, `an answer to ${stream}/${group}`)
  return client.frames[before].event.type
}

t.test('registration', async t => {
  t.equal(fastifyStreams, streams, 'the named export is the default export')

  await t.test('a second registration fails with STREAMS_ERR_ALREADY_REGISTERED and changes nothing', async t => {
    const app = Fastify({ logger: false, forceCloseConnections: true })
    t.teardown(() => app.close())
    await app.register(streams)
    const first = app.streams
    await app.streams.set('s', 'g', 'a', 1)
    await t.rejects(async () => { await app.register(streams, { path: '/second' }) }, { code: 'STREAMS_ERR_ALREADY_REGISTERED' })
    t.notOk(app.hasRoute({ method: 'GET', url: '/second' }), 'the second added no route')
    t.equal(app.streams, first, 'the decorator is the first one')
    t.same(await app.streams.getGroup('s', 'g'), [1], 'the data is still there')
  })

  await t.test('two registrations before ready: the second fails', async t => {
    const app = Fastify({ logger: false })
    t.teardown(() => app.close())
    app.register(streams)
    app.register(streams, { path: '/other' })
    await t.rejects(async () => { await app.ready() }, { code: 'STREAMS_ERR_ALREADY_REGISTERED' })
    t.notOk(app.hasRoute({ method: 'GET', url: '/other' }), 'the second added no route')
  })

  await t.test('an app that registered @fastify/websocket itself: the plugin uses it', async t => {
    const app = Fastify({ logger: false, forceCloseConnections: true })
    t.teardown(() => app.close())
    await app.register(websocket)
    await app.register(streams, { auth_function: (input) => ({ context: input.headers['sec-websocket-protocol'] }) })
    app.get('/echo', { websocket: true }, (socket) => { socket.on('message', data => socket.send(`echo:${data.toString()}`)) })
    const url = await listen(app)
    const client = await RawClient.open(url, ['Authorization', 'tok'])
    t.teardown(() => client.close())
    t.equal(client.socket.protocol, 'Authorization', 'a subprotocol is echoed')
    t.equal(await answer(client, 's', 'g'), 'sync', 'the stream route works')
    // The app's own websocket route still works next to ours.
    const { WebSocket } = await import('ws')
    const echo = new WebSocket(url.replace(/\/$/, '/echo'))
    const reply = await new Promise<string>((resolve, reject) => {
      echo.once('open', () => echo.send('hi'))
      echo.once('message', data => resolve(data.toString()))
      echo.once('error', reject)
    })
    echo.close()
    t.equal(reply, 'echo:hi')
  })

  await t.test('the path option serves the socket at another path', async t => {
    const { app, url } = await serve({ path: '/streams/ws' })
    t.teardown(() => app.close())
    const client = await RawClient.open(url.replace(/\/$/, '/streams/ws'))
    t.teardown(() => client.close())
    t.equal(await answer(client, 's', 'g'), 'sync')
    t.not(await refusal(url), -1, 'nothing is served at /')
    const response = await app.inject({ method: 'GET', url: '/streams/ws' })
    t.equal(response.statusCode, 404, 'a plain GET of the path is not a socket')
  })

  await t.test('the stock node client works at a custom path', async t => {
    const { app, url } = await serve({ path: '/live' })
    t.teardown(() => app.close())
    await app.streams.set('todo', 'inbox', 't1', { title: 'milk' })
    const stream = openStock(t, url.replace(/\/$/, '/live'))
    const group = stream.subscribeGroup('todo', 'inbox')
    await waitFor(() => (group.getState() as unknown[]).length === 1, 'the sync')
    t.same(group.getState(), [{ title: 'milk', id: 't1' }])
  })
})

t.test('the ws internals', async t => {
  await t.test('an error listener the app installed on its sockets is kept, whoever registered @fastify/websocket', async t => {
    for (const appRegisters of [false, true]) {
      const app = Fastify({ logger: false, forceCloseConnections: true })
      t.teardown(() => app.close())
      const handled: unknown[] = []
      if (appRegisters) await app.register(websocket, { errorHandler: (error) => { handled.push(error) } })
      await app.register(streams)
      const appListener = (): void => {}
      app.websocketServer.on('connection', (socket: import('ws').WebSocket) => socket.on('error', appListener))
      const url = await listen(app)
      const client = await RawClient.open(url)
      t.equal(await answer(client, 's', 'g'), 'sync')
      const [server] = [...app.websocketServer.clients]
      t.ok(server.listeners('error').includes(appListener), `app registers @fastify/websocket: ${appRegisters}: the app's listener is there`)
      if (appRegisters) {
        server.emit('error', new Error('boom'))
        t.equal(handled.length, 1, 'the app\'s @fastify/websocket errorHandler still runs')
      }
      await client.close()
      await app.close()
    }
  })

  await t.test('ws internals the plugin relies on are checked at start: STREAMS_ERR_WS_INTERNALS', async t => {
    const { WebSocket } = await import('ws')
    t.doesNotThrow(() => checkWsInternals(WebSocket), 'the installed ws passes')
    class Moved extends WebSocket {}
    Object.defineProperty(Moved.prototype, 'setSocket', { value: undefined })
    t.throws(() => checkWsInternals(Moved), { code: 'STREAMS_ERR_WS_INTERNALS' })
    const app = Fastify({ logger: false })
    t.teardown(() => app.close())
    await app.register(websocket, { options: { WebSocket: Moved as never } })
    await t.rejects(async () => { await app.register(streams) }, { code: 'STREAMS_ERR_WS_INTERNALS' }, 'registration fails with the code')
  })

  await t.test('two apps in one process each deliver their own frames', async t => {
    const served = await Promise.all([serve(), serve()])
    t.teardown(() => Promise.all(served.map(({ app }) => app.close())))
    const clients = await Promise.all(served.map(({ url }) => RawClient.open(url)))
    t.teardown(() => Promise.all(clients.map(client => client.close())))
    for (const client of clients) t.equal(await answer(client, 's', 'g'), 'sync')
    await Promise.all(served.map(({ app }, index) => app.streams.set('s', 'g', 'a', index)))
    await Promise.all(clients.map((client, index) => marked(served[index].app, client, 's', 'g')))
    t.same(clients.map(client => client.frames.slice(1).map(frame => frame.event.data)), [[0], [1]], 'each app\'s change on its own sockets only')
  })
})

t.test('app.close()', async t => {
  await t.test('closes every socket with 1001 and runs the leave triggers', async t => {
    const left: string[] = []
    const { app, url } = await serve({}, app => {
      app.streams.registerFunction({ function_path: 'onLeave', handler: (input: JoinInput) => { left.push(input.subscription_id) } })
      app.streams.registerTrigger({ trigger_type: 'streams:leave', function_path: 'onLeave' })
    })
    const clients = await Promise.all([0, 1, 2].map(() => RawClient.open(url)))
    for (const [index, client] of clients.entries()) await answer(client, 's', `g${index}`)
    t.equal(app.streams.connectionCount, 3)
    await app.close()
    await waitFor(() => clients.every(client => client.closeCode !== null), 'every socket to close')
    t.same(clients.map(client => client.closeCode), [1001, 1001, 1001], 'going away')
    t.equal(app.streams.connectionCount, 0)
    await waitFor(() => left.length === 3, 'the leave triggers')
    t.same(left.sort(), ['sub-1', 'sub-1', 'sub-1'])
    await t.rejects(app.streams.get('s', 'g0', 'a'), { code: 'STREAMS_ERR_CLOSED' })
  })

  await t.test('leaves no socket, server or timer behind', async t => {
    const tmp = mkdtempSync(join(tmpdir(), 'fastify-streams-close-'))
    t.teardown(() => rmSync(tmp, { recursive: true, force: true }))
    const watched = ['TCPSocketWrap', 'TCPServerWrap', 'Timeout', 'Immediate', 'FSReqCallback']
    const count = (): Record<string, number> => {
      const counts: Record<string, number> = Object.fromEntries(watched.map(name => [name, 0]))
      for (const name of process.getActiveResourcesInfo()) if (name in counts) counts[name]++
      return counts
    }
    await pause(20)
    const before = count()
    const options: StreamsOptions = { adapter: { class: 'kv', config: { store_method: 'file_based', file_path: join(tmp, 'db.sqlite') } } }
    const { app, url } = await serve(options)
    await app.streams.set('s', 'g', 'a', { v: 1 })
    const clients = await Promise.all([0, 1].map(() => RawClient.open(url)))
    for (const client of clients) await answer(client, 's', 'g')
    await app.streams.set('s', 'g', 'a', { v: 2 })
    await waitFor(() => clients.every(client => client.frames.length === 2), 'the update')
    t.ok(count().TCPSocketWrap >= before.TCPSocketWrap + 4, 'sockets were open')
    await app.close()
    await waitFor(() => clients.every(client => client.closeCode !== null), 'the sockets to close')
    let after = count()
    await waitFor(() => {
      after = count()
      return watched.every(name => after[name] <= before[name])
    }, 'the handles to go', 3000).catch(() => {})
    t.same(after, before, 'no extra handle remains (client sockets included, both ends are in this process)')
  })

  await t.test('a socket arriving while the app closes is turned away', async t => {
    const { app, url } = await serve()
    const client = await RawClient.open(url)
    const closing = app.close()
    const late = await refusal(url)
    await closing
    t.not(late, -1, 'no socket opened after close began')
    await waitFor(() => client.closeCode !== null, 'the open socket to close')
    t.equal(client.closeCode, 1001)
  })
})

t.test('auth', async t => {
  await t.test('a registry path, registered after register, resolved at connection time: the input', async t => {
    const inputs: AuthInput[] = []
    const { app, url } = await serve({ auth_function: 'onAuth' }, app => {
      app.streams.registerFunction({ function_path: 'onAuth', handler: (input: AuthInput) => { inputs.push(input); return { context: { user: 'ana' } } } })
    })
    t.teardown(() => app.close())
    const client = await RawClient.open(`${url}?a=1&a=2&authToken=x%20y&flag`, undefined, { 'X-Custom-Header': 'Yes' })
    t.teardown(() => client.close())
    t.equal(inputs.length, 1)
    const [input] = inputs
    t.equal(input.headers['x-custom-header'], 'Yes', 'header names lower-case')
    t.ok(Object.keys(input.headers).every(name => name === name.toLowerCase()), 'every header name lower-case')
    t.equal(input.headers.upgrade, 'websocket')
    t.equal(input.path, '/', 'the path without the query')
    t.same({ ...input.query_params }, { a: ['1', '2'], authToken: ['x%20y'], flag: [''] }, 'query values split, repeated, not decoded')
    const local = (client.socket as unknown as { _socket: { localPort: number } })._socket.localPort
    t.equal(input.addr, `127.0.0.1:${local}`, 'addr is the peer ip:port')
  })

  await t.test('a query value containing "?" or "=" is kept whole (split on the first "?" and the first "=")', async t => {
    const inputs: AuthInput[] = []
    const { app, url } = await serve({ authFunction: (input) => { inputs.push(input) } })
    t.teardown(() => app.close())
    const client = await RawClient.open(`${url}?next=/a?b=c&token=abc==&&=skipped`)
    t.teardown(() => client.close())
    t.same({ ...inputs[0].query_params }, { next: ['/a?b=c'], token: ['abc=='] })
  })

  await t.test('the context reaches join and leave triggers; a registry auth can change after register', async t => {
    const joins: JoinInput[] = []
    const leaves: JoinInput[] = []
    const { app, url } = await serve({ auth_function: 'onAuth' }, app => {
      app.streams.registerFunction({ function_path: 'onJoin', handler: (input: JoinInput) => { joins.push(input) } })
      app.streams.registerFunction({ function_path: 'onLeave', handler: (input: JoinInput) => { leaves.push(input) } })
      app.streams.registerTrigger({ trigger_type: 'streams:join', function_path: 'onJoin' })
      app.streams.registerTrigger({ trigger_type: 'streams:leave', function_path: 'onLeave' })
    })
    t.teardown(() => app.close())
    t.equal(await refusal(url), 401, 'an auth path not registered yet: 401')
    const registered = app.streams.registerFunction({ function_path: 'onAuth', handler: (input: AuthInput) => ({ context: { user: input.query_params.user?.[0] } }) })
    const client = await RawClient.open(`${url}?user=ana`)
    t.equal(await answer(client, 'todo', 'inbox'), 'sync')
    client.leave('todo', 'inbox', 'sub-1')
    await waitFor(() => leaves.length === 1, 'the leave')
    t.same(joins, [{ subscription_id: 'sub-1', stream_name: 'todo', group_id: 'inbox', id: null, context: { user: 'ana' } }])
    t.same(leaves, [{ subscription_id: 'sub-1', stream_name: 'todo', group_id: 'inbox', id: null, context: { user: 'ana' } }])
    await client.close()
    registered.unregister()
    t.equal(await refusal(url), 401, 'unregistered again: 401')
  })

  await t.test('a dotted decorator path, called with `this` bound', async t => {
    const joins: JoinInput[] = []
    const { app, url } = await serve({ auth_function: 'motia.streams.authenticate' }, app => {
      app.decorate('motia', {
        streams: {
          secret: 's3cret',
          authenticate (this: { secret: string }, input: AuthInput) { return { context: { secret: this.secret, path: input.path } } }
        }
      })
      app.streams.registerFunction({ function_path: 'onJoin', handler: (input: JoinInput) => { joins.push(input) } })
      app.streams.registerTrigger({ trigger_type: 'stream:join', function_path: 'onJoin' })
    })
    t.teardown(() => app.close())
    const client = await RawClient.open(url)
    t.teardown(() => client.close())
    t.equal(await answer(client, 's', 'g', 'item'), 'sync')
    t.same(joins, [{ subscription_id: 'sub-1', stream_name: 's', group_id: 'g', id: 'item', context: { secret: 's3cret', path: '/' } }])
  })

  await t.test('a dotted path that resolves to nothing (or to a non-function) is a 401', async t => {
    for (const path of ['motia.streams.nothing', 'nothing.at.all', 'motia.streams.value', 'motia.__proto__.x']) {
      const { app, url } = await serve({ auth_function: path }, app => { app.decorate('motia', { streams: { value: 1 } }) })
      t.equal(await refusal(url), 401, path)
      await app.close()
    }
  })

  await t.test('a function given directly; returning nothing means anonymous (context null)', async t => {
    for (const result of [undefined, null, {}, { context: undefined }, 'text']) {
      const joins: JoinInput[] = []
      const { app, url } = await serve({ authFunction: async () => result as never }, app => {
        app.streams.registerFunction({ function_path: 'onJoin', handler: (input: JoinInput) => { joins.push(input) } })
        app.streams.registerTrigger({ trigger_type: 'streams:join', function_path: 'onJoin' })
      })
      const client = await RawClient.open(url)
      t.equal(await answer(client, 's', 'g'), 'sync', `returning ${JSON.stringify(result)}: accepted`)
      t.equal(joins[0].context, null, `returning ${JSON.stringify(result)}: context null`)
      await client.close()
      await app.close()
    }
  })

  await t.test('a throwing auth function: HTTP 401 before the upgrade; authFailure anonymous: accepted, context null', async t => {
    for (const auth of [() => { throw new Error('bad token') }, async () => { throw new Error('bad token') }]) {
      const { app, url } = await serve({ auth_function: auth })
      t.equal(await refusal(url), 401)
      t.equal(app.streams.connectionCount, 0)
      await app.close()
    }
    const joins: JoinInput[] = []
    const { app, url } = await serve({ auth_function: 'onAuth', authFailure: 'anonymous' }, app => {
      app.streams.registerFunction({ function_path: 'onAuth', handler: () => { throw new Error('bad token') } })
      app.streams.registerFunction({ function_path: 'onJoin', handler: (input: JoinInput) => { joins.push(input) } })
      app.streams.registerTrigger({ trigger_type: 'streams:join', function_path: 'onJoin' })
    })
    t.teardown(() => app.close())
    const client = await RawClient.open(url)
    t.teardown(() => client.close())
    t.equal(await answer(client, 's', 'g'), 'sync')
    t.equal(joins[0].context, null)
  })

  await t.test('a token as Sec-WebSocket-Protocol reaches the auth function; "Authorization" is echoed', async t => {
    const seen: string[] = []
    const { app, url } = await serve({
      auth_function: (input) => {
        const [scheme, token] = (input.headers['sec-websocket-protocol'] ?? '').split(/,\s*/)
        if (scheme !== 'Authorization' || token !== 'tok-123') throw new Error('no token')
        seen.push(token)
        return { context: { token } }
      }
    })
    t.teardown(() => app.close())
    const client = await RawClient.open(url, ['Authorization', 'tok-123'])
    t.teardown(() => client.close())
    t.same(seen, ['tok-123'])
    t.equal(client.socket.protocol, 'Authorization', 'the subprotocol echoed is Authorization, never the token')
    t.equal(await answer(client, 's', 'g'), 'sync')
    t.equal(await refusal(url, ['Authorization', 'wrong']), 401, 'a wrong token is refused')
    t.equal(await refusal(url), 401, 'no token is refused')
  })

  await t.test('the stock node client with the Authorization protocol', async t => {
    const { app, url } = await serve({
      auth_function: (input) => {
        if (!/^Authorization, ?tok$/.test(input.headers['sec-websocket-protocol'] ?? '')) throw new Error('no token')
        return { context: 'tok' }
      }
    })
    t.teardown(() => app.close())
    await app.streams.set('s', 'g', 'a', { v: 1 })
    const stream = openStock(t, url, { protocols: ['Authorization', 'tok'] })
    const item = stream.subscribeItem('s', 'g', 'a')
    await waitFor(() => item.getState() !== null, 'the sync')
    t.same(item.getState(), { v: 1, id: 'a' })
  })
})

t.test('auth refusals a user can act on', async t => {
  const warnings = (logs: LogLine[], pattern: RegExp): LogLine[] => logs.filter(line => line.level === WARN && pattern.test(line.msg))

  await t.test('an auth path that names nothing is said at start-up, once the app is ready', async t => {
    const logs: LogLine[] = []
    const { app } = await serve({ auth_function: 'motia.streams.authenticate' }, undefined, logs)
    t.teardown(() => app.close())
    const said = warnings(logs, /auth_function/)
    t.equal(said.length, 1, 'one warning')
    t.equal(said[0].auth_function, 'motia.streams.authenticate', 'naming the path')

    for (const [label, setup] of [
      ['a function registered before ready', (app: FastifyInstance) => { app.streams.registerFunction({ function_path: 'motia.streams.authenticate', handler: () => null }) }],
      ['a decorator path', (app: FastifyInstance) => { app.decorate('motia', { streams: { authenticate: () => null } }) }]
    ] as const) {
      const quiet: LogLine[] = []
      const served = await serve({ auth_function: 'motia.streams.authenticate' }, setup, quiet)
      t.same(warnings(quiet, /auth_function/), [], `${label}: no warning`)
      await served.app.close()
    }
  })

  await t.test('each 401 is logged at warn with its reason, rate-limited; the auth error appears once', async t => {
    const logs: LogLine[] = []
    const { app, url } = await serve({ auth_function: () => { throw Object.assign(new Error('token expired'), { code: 'E_TOKEN' }) } }, undefined, logs)
    t.teardown(() => app.close())
    for (let i = 0; i < 3; i++) t.equal(await refusal(url), 401)
    const said = warnings(logs, /401/)
    t.equal(said.length, 1, 'three refusals in a row: one warning')
    t.match(said[0].reason, /E_TOKEN token expired/, 'the reason, with the code')
    t.equal(JSON.stringify(said[0]).split('token expired').length, 2, 'said once (no error object, stack or cause repeating it)')
    t.match(said[0].msg, /refused a socket/, 'a socket, for an upgrade')
  })

  await t.test('a refused feed read is logged as a request, with its method and path (no query: it may hold a token)', async t => {
    const logs: LogLine[] = []
    const { app, url } = await serve({ feeds: true, auth_function: () => { throw new Error('no token') } }, undefined, logs)
    t.teardown(() => app.close())
    const response = await fetch(url.replace('ws:', 'http:') + 'v1/groups/s/g?offset=-1&authToken=secret')
    t.equal(response.status, 401)
    const said = warnings(logs, /401/)
    t.equal(said.length, 1)
    t.match(said[0].msg, /refused a request \(GET \/v1\/groups\/s\/g\)/)
    t.notMatch(JSON.stringify(said[0]), /secret/, 'the query is not logged')
  })
})

t.test('join and leave triggers', async t => {
  await t.test('both spellings run, all of them, in registration order, with the engine input', async t => {
    const calls: Array<[string, JoinInput]> = []
    const { app, url } = await serve({ authFunction: () => ({ context: { user: 'ana' } }) }, app => {
      for (const [name, type] of [['first', 'streams:join'], ['second', 'stream:join'], ['third', 'streams:join']] as const) {
        app.streams.registerFunction({ function_path: name, handler: async (input: JoinInput) => { await pause(5); calls.push([name, input]); return { unauthorized: false } } })
        app.streams.registerTrigger({ trigger_type: type, function_path: name })
      }
    })
    t.teardown(() => app.close())
    const client = await RawClient.open(url)
    t.teardown(() => client.close())
    t.equal(await answer(client, 'todo', 'inbox', 't1'), 'sync')
    const input = { subscription_id: 'sub-1', stream_name: 'todo', group_id: 'inbox', id: 't1', context: { user: 'ana' } }
    t.same(calls, [['first', input], ['second', input], ['third', input]])
  })

  await t.test('every join trigger runs, in order, even after one refused; the join is refused', async t => {
    const calls: string[] = []
    const { app, url } = await serve({}, app => {
      for (const [name, result] of [['count', undefined], ['deny', { unauthorized: true }], ['audit', { unauthorized: false }]] as const) {
        app.streams.registerFunction({ function_path: name, handler: () => { calls.push(name); return result } })
        app.streams.registerTrigger({ trigger_type: 'streams:join', function_path: name })
      }
    })
    t.teardown(() => app.close())
    const client = await RawClient.open(url)
    t.teardown(() => client.close())
    t.equal(await answer(client, 's', 'g'), 'unauthorized')
    t.same(calls, ['count', 'deny', 'audit'], 'the trigger after the refusal ran too')
  })

  await t.test('{ unauthorized: true } denies with exactly the engine envelope; no sync, no events after', async t => {
    const { app, url } = await serve({}, app => {
      app.streams.registerFunction({ function_path: 'onJoin', handler: (input: JoinInput) => input.group_id === 'secret' ? { unauthorized: true } : undefined })
      app.streams.registerTrigger({ trigger_type: 'streams:join', function_path: 'onJoin' })
    })
    t.teardown(() => app.close())
    await app.streams.set('s', 'secret', 'a', { v: 1 })
    const client = await RawClient.open(url)
    t.teardown(() => client.close())
    const raw: string[] = []
    client.socket.on('message', data => raw.push(data.toString()))
    t.equal(await answer(client, 's', 'secret', 'a'), 'unauthorized')
    t.equal(await answer(client, 's', 'secret'), 'unauthorized')
    t.match(raw[0], /^\{"type":"stream","timestamp":\d+,"streamName":"s","groupId":"secret","id":"a","event":\{"type":"unauthorized"\}\}$/)
    t.match(raw[1], /^\{"type":"stream","timestamp":\d+,"streamName":"s","groupId":"secret","id":null,"event":\{"type":"unauthorized"\}\}$/)
    await app.streams.set('s', 'secret', 'a', { v: 2 })
    await app.streams.send('s', 'secret', { type: 'ping' })
    t.equal(await answer(client, 's', 'open'), 'sync', 'a later allowed join is answered')
    await app.streams.set('s', 'secret', 'a', { v: 3 })
    await marked(app, client, 's', 'open')
    t.same(client.frames.map(frame => frame.event.type), ['unauthorized', 'unauthorized', 'sync'], 'nothing from the denied group')
  })

  await t.test('a throwing join trigger denies by default; joinFailure: allow lets it through', async t => {
    for (const [options, expected] of [[{}, 'unauthorized'], [{ joinFailure: 'allow' }, 'sync'], [{ join_failure: 'allow' }, 'sync']] as const) {
      const { app, url } = await serve(options, app => {
        app.streams.registerFunction({ function_path: 'onJoin', handler: async (input: JoinInput) => { if (input.group_id === 'g') throw new Error('db down') } })
        app.streams.registerTrigger({ trigger_type: 'streams:join', function_path: 'onJoin' })
      })
      const client = await RawClient.open(url)
      t.equal(await answer(client, 's', 'marker'), 'sync')
      t.equal(await answer(client, 's', 'g'), expected, JSON.stringify(options))
      await app.streams.set('s', 'g', 'a', 1)
      await marked(app, client, 's', 'marker')
      t.equal(client.frames.length, expected === 'sync' ? 3 : 2, 'events only when allowed')
      await client.close()
      await app.close()
    }
  })

  await t.test('a join trigger whose function is not registered counts as a failure', async t => {
    const { app, url } = await serve({}, app => {
      app.streams.registerTrigger({ trigger_type: 'streams:join', function_path: 'missing' })
    })
    t.teardown(() => app.close())
    const client = await RawClient.open(url)
    t.teardown(() => client.close())
    t.equal(await answer(client, 's', 'g'), 'unauthorized')
  })

  await t.test('leave runs on an explicit leave of a held subscription (never for an id not joined) and on disconnect once per open subscription', async t => {
    const leaves: JoinInput[] = []
    const { app, url } = await serve({ auth_function: () => ({ context: 'ctx' }) }, app => {
      app.streams.registerFunction({ function_path: 'onLeave', handler: (input: JoinInput) => { leaves.push(input) } })
      app.streams.registerTrigger({ trigger_type: 'stream:leave', function_path: 'onLeave' })
    })
    t.teardown(() => app.close())
    const client = await RawClient.open(url)
    const a = client.join('s', 'g')
    const b = client.join('s', 'g', 'b')
    const c = client.join('s', 'h')
    // Joined last, so its leave comes last on disconnect: a marker for "nothing more".
    const last = client.join('s', 'last')
    await waitFor(() => client.frames.length === 4, 'four syncs')
    client.leave('s', 'g', 'never', 'x')
    client.leave('s', 'g', b, 'b')
    // Frames are handled in order: once the leave of b ran, the one before it had its chance.
    await waitFor(() => leaves.length === 1, 'the explicit leave')
    t.same(leaves, [{ subscription_id: b, stream_name: 's', group_id: 'g', id: 'b', context: 'ctx' }], 'no trigger for the id never joined')
    await client.close()
    await waitFor(() => leaves.some(input => input.subscription_id === last), 'the disconnect leaves')
    t.same(leaves.slice(1).map(input => input.subscription_id), [a, c, last], 'once each, none for the one already left')
    t.same(leaves.slice(1).find(input => input.subscription_id === c), { subscription_id: c, stream_name: 's', group_id: 'h', id: null, context: 'ctx' })
  })

  await t.test('a denied join leaves nothing to clean up on disconnect; a throwing leave trigger is harmless', async t => {
    const leaves: string[] = []
    const { app, url } = await serve({}, app => {
      app.streams.registerFunction({ function_path: 'onJoin', handler: (input: JoinInput) => ({ unauthorized: input.group_id === 'no' }) })
      app.streams.registerFunction({ function_path: 'boom', handler: () => { throw new Error('boom') } })
      app.streams.registerFunction({ function_path: 'onLeave', handler: (input: JoinInput) => { leaves.push(input.group_id) } })
      app.streams.registerTrigger({ trigger_type: 'streams:join', function_path: 'onJoin' })
      app.streams.registerTrigger({ trigger_type: 'streams:leave', function_path: 'boom' })
      app.streams.registerTrigger({ trigger_type: 'streams:leave', function_path: 'onLeave' })
    })
    t.teardown(() => app.close())
    const client = await RawClient.open(url)
    t.equal(await answer(client, 's', 'no'), 'unauthorized')
    t.equal(await answer(client, 's', 'yes'), 'sync')
    t.equal(await answer(client, 's', 'last'), 'sync')
    await client.close()
    await waitFor(() => leaves.includes('last'), 'the leaves')
    t.same(leaves, ['yes', 'last'], 'the leave after a throwing one still ran, only for the accepted joins')
    const other = await RawClient.open(url)
    t.teardown(() => other.close())
    t.equal(await answer(other, 's', 'yes'), 'sync', 'the server still serves')
  })
})
