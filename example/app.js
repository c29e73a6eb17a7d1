// The example: a small todo list per user, live in the browser through fastify-streams.
// A Fastify plugin the standalone server registers after the streams plugin (see config.yaml: app_modules).
//
//   stream `todo`, group `<user>`: one list per user; item values { id, title, done, createdAt }.
//   Tokens (a static demo map; pass `tokens` in the module options to change it):
//     ana-token → ana, bob-token → bob
//   WebSocket auth (`example.auth`): `Sec-WebSocket-Protocol: Authorization, <token>` or `?authToken=<token>`;
//     no token or an unknown one = anonymous visitor ({ context: null }), not an error.
//   Join trigger (`example.join`): a user may join only their own list (stream `todo`, group = their name);
//     everyone else gets the `unauthorized` envelope.
//   HTTP (header `Authorization: Bearer <token>`, own list only: 401 without a known token, 403 for another list):
//     GET    /api/me                    → { user }
//     GET    /api/todos/:user           → the list (app.streams.getGroup)
//     POST   /api/todos/:user           { title }           → 201 the new item
//     PATCH  /api/todos/:user/:id       { title?, done? }   → the updated item (one atomic merge)
//     DELETE /api/todos/:user/:id       → 204
//   Pages: /app/?token=ana-token (the stock browser client), /app/react.html?token=ana-token (the React client);
//     static files from example/public, their bundles built by esbuild (npm run build:example).
//   Feed page: /app/feed.html?token=ana-token (needs `feeds: true`; the token as `authToken` on the feed URL).
import { randomUUID } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const STREAM = 'todo'
/** The page this module serves; the standalone command prints its URL once listening. */
export const page = '/app/?token=ana-token'
export const DEFAULT_TOKENS = Object.freeze({ 'ana-token': 'ana', 'bob-token': 'bob' })

const publicDir = join(dirname(fileURLToPath(import.meta.url)), 'public')
const STATIC_FILES = {
  'index.html': 'text/html; charset=utf-8',
  'todo.css': 'text/css; charset=utf-8',
  'bundle.js': 'text/javascript; charset=utf-8',
  'react.html': 'text/html; charset=utf-8',
  'react.js': 'text/javascript; charset=utf-8',
  // The same list through its group feed (the plugin's `feeds` option; see config.yaml).
  'feed.html': 'text/html; charset=utf-8',
  'feed.js': 'text/javascript; charset=utf-8'
}

/** The token offered as `Authorization, <token>` in Sec-WebSocket-Protocol, or the `authToken` query parameter. */
function socketToken (headers, queryParams) {
  const offered = (headers['sec-websocket-protocol'] ?? '').split(',').map(part => part.trim())
  const at = offered.indexOf('Authorization')
  if (at !== -1 && offered[at + 1]) return offered[at + 1]
  const fromQuery = queryParams?.authToken?.[0]
  if (!fromQuery) return null
  try {
    return decodeURIComponent(fromQuery) // the engine passes query values undecoded
  } catch {
    return null
  }
}

export default async function todoExample (app, opts = {}) {
  const tokens = opts.tokens ?? DEFAULT_TOKENS
  const userOf = token => (typeof token === 'string' && Object.hasOwn(tokens, token) ? tokens[token] : null)

  app.streams.registerFunction({
    function_path: 'example.auth',
    handler: async ({ headers, query_params: queryParams }) => {
      const user = userOf(socketToken(headers, queryParams))
      return { context: user === null ? null : { user } }
    }
  })
  app.streams.registerFunction({
    function_path: 'example.join',
    handler: async ({ stream_name: stream, group_id: group, context }) => {
      const user = context?.user
      if (stream === STREAM && typeof user === 'string' && group === user) return {}
      return { unauthorized: true }
    }
  })
  app.streams.registerTrigger({ trigger_type: 'streams:join', function_path: 'example.join' })

  function httpUser (request, reply) {
    const match = /^Bearer\s+(\S+)$/i.exec(request.headers.authorization ?? '')
    const user = userOf(match?.[1])
    if (user === null) {
      reply.code(401).send({ error: 'Unauthorized', message: 'send Authorization: Bearer <token>' })
      return null
    }
    return user
  }

  /** preHandler for /api/todos/:user routes: only the list's owner. */
  async function ownListOnly (request, reply) {
    const user = httpUser(request, reply)
    if (user === null) return reply
    if (request.params.user !== user) return reply.code(403).send({ error: 'Forbidden', message: `${user} may not use the list of ${request.params.user}` })
  }

  const userParam = { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' }
  const idParam = { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' }

  app.get('/api/me', async (request, reply) => {
    const user = httpUser(request, reply)
    if (user === null) return reply
    return { user }
  })

  app.get('/api/todos/:user', {
    schema: { params: { type: 'object', properties: { user: userParam }, required: ['user'] } },
    preHandler: ownListOnly
  }, async request => app.streams.getGroup(STREAM, request.params.user))

  app.post('/api/todos/:user', {
    schema: {
      params: { type: 'object', properties: { user: userParam }, required: ['user'] },
      body: {
        type: 'object',
        properties: { title: { type: 'string', minLength: 1, maxLength: 200 } },
        required: ['title'],
        additionalProperties: false
      }
    },
    preHandler: ownListOnly
  }, async (request, reply) => {
    const item = { id: randomUUID(), title: request.body.title, done: false, createdAt: new Date().toISOString() }
    await app.streams.set(STREAM, request.params.user, item.id, item)
    return reply.code(201).send(item)
  })

  app.patch('/api/todos/:user/:id', {
    schema: {
      params: { type: 'object', properties: { user: userParam, id: idParam }, required: ['user', 'id'] },
      body: {
        type: 'object',
        properties: { title: { type: 'string', minLength: 1, maxLength: 200 }, done: { type: 'boolean' } },
        additionalProperties: false
      }
    },
    preHandler: ownListOnly
  }, async (request, reply) => {
    const { user, id } = request.params
    // Only an existing item is patched; the write itself is one atomic merge, so two PATCHes of different
    // fields never undo each other.
    if (await app.streams.get(STREAM, user, id) === null) return reply.code(404).send({ error: 'Not Found', message: `no item ${id}` })
    const { old_value: before, new_value: item } = await app.streams.update(STREAM, user, id, [{ type: 'merge', value: request.body }])
    if (before === null) {
      // Deleted between the check and the merge: the merge made a partial item, take it back.
      await app.streams.delete(STREAM, user, id)
      return reply.code(404).send({ error: 'Not Found', message: `no item ${id}` })
    }
    return item
  })

  app.delete('/api/todos/:user/:id', {
    schema: { params: { type: 'object', properties: { user: userParam, id: idParam }, required: ['user', 'id'] } },
    preHandler: ownListOnly
  }, async (request, reply) => {
    const { user, id } = request.params
    const result = await app.streams.delete(STREAM, user, id)
    if (result?.old_value === null || result?.old_value === undefined) return reply.code(404).send({ error: 'Not Found', message: `no item ${id}` })
    return reply.code(204).send()
  })

  // The page, under /app/ (the stream socket stays at /). Only the files listed above are served.
  app.get('/app', async (request, reply) => reply.redirect('/app/'))
  app.get('/app/', async (request, reply) => sendStatic(reply, 'index.html'))
  app.get('/app/:file', async (request, reply) => sendStatic(reply, request.params.file))
  app.get('/favicon.ico', async (request, reply) => reply.code(204).send())

  async function sendStatic (reply, file) {
    if (!Object.hasOwn(STATIC_FILES, file)) return reply.code(404).send({ error: 'Not Found' })
    try {
      const body = await readFile(join(publicDir, file))
      return reply.type(STATIC_FILES[file]).header('cache-control', 'no-cache').send(body)
    } catch (err) {
      if (err.code !== 'ENOENT') throw err
      const hint = file.endsWith('.js') ? ' (build it: npm run build:example)' : ''
      return reply.code(404).send({ error: 'Not Found', message: `${file} is missing${hint}` })
    }
  }
}
