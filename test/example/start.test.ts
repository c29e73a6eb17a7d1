// What `npm start` runs: the standalone command on example/config.yaml, used as a visitor and as a user would.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Stream } from '@motiadev/stream-client-node'
import t from 'tap'
import { root, run, type Run } from '../helpers/cli.js'
import { freePort } from '../helpers/wait.js'
import { RawClient, until } from '../helpers/app.js'

const config = join(root, 'example', 'config.yaml')

async function start (cwd: string, port: number): Promise<Run> {
  const server = run(['--config', config], { STREAMS_PORT: String(port), STREAMS_HOST: '127.0.0.1', LOG_LEVEL: 'warn' }, cwd)
  await until(() => server.stdout().includes('listening') || server.child.exitCode !== null, 'the server to listen', 15000)
  if (server.child.exitCode !== null) throw new Error(`the server exited: ${server.stderr()}`)
  return server
}

async function stop (server: Run): Promise<number | null> {
  server.child.kill('SIGTERM')
  return await server.exit
}

t.test('the example server: anonymous visitors are refused, a user gets the events of the HTTP routes, data survives a restart', async t => {
  // The example keeps its SQLite file at ./data/ relative to the working directory: a fresh one per test.
  const cwd = mkdtempSync(join(tmpdir(), 'streams-start-'))
  t.teardown(() => rmSync(cwd, { recursive: true, force: true }))
  const port = await freePort()
  const url = `ws://127.0.0.1:${port}/`
  const api = `http://127.0.0.1:${port}/api/todos/ana`
  const auth = { authorization: 'Bearer ana-token', 'content-type': 'application/json' }
  let server = await start(cwd, port)
  t.teardown(() => { server.child.kill('SIGKILL') })

  const visitor = await RawClient.open(url)
  visitor.join('todo', 'ana')
  await until(() => visitor.frames.length === 1, 'an answer to the anonymous join')
  t.same(visitor.frames[0].event, { type: 'unauthorized' }, 'an anonymous visitor may connect but not read ana\'s list')
  await visitor.close()

  const stream = new Stream(url, { protocols: ['Authorization', 'ana-token'] })
  const list = stream.subscribeGroup('todo', 'ana')
  await until(() => (list as unknown as { lastTimestamp: number }).lastTimestamp > 0, 'ana\'s sync')
  const created = await (await fetch(api, { method: 'POST', headers: auth, body: JSON.stringify({ title: 'buy milk' }) })).json() as { id: string }
  await until(() => (list.getState() as Array<{ id: string }>).some(item => item.id === created.id), 'the created item over the socket')
  await fetch(`${api}/${created.id}`, { method: 'PATCH', headers: auth, body: JSON.stringify({ done: true }) })
  await until(() => (list.getState() as unknown as Array<{ done: boolean }>)[0]?.done, 'the update over the socket')
  t.same(list.getState(), await (await fetch(api, { headers: auth })).json(), 'the subscriber shows what GET returns')
  stream.close()

  t.equal(await stop(server), 0, 'SIGTERM exits 0')
  server = await start(cwd, port)
  const after = await (await fetch(api, { headers: auth })).json() as Array<{ id: string, done: boolean }>
  t.same(after.map(item => [item.id, item.done]), [[created.id, true]], 'the list is still there after a restart (SQLite)')
  t.equal(await stop(server), 0)
})
