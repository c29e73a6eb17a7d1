// Custom adapters: a user object implementing the StreamAdapter contract, given directly (borrowed: the app
// never closes it), built by a factory named in `adapter.class` (owned: closed with the app), or exported by a
// module that `adapter.class` names (a path relative to a YAML config or to the working directory, a URL, a
// package), works end to end with the stock client. Broken adapters and unknown classes fail `register` with
// coded errors; a borrowed ioredis client is never quit by the plugin.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, relative } from 'node:path'
import { pathToFileURL } from 'node:url'
import t, { type Test } from 'tap'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import { Stream } from '@motiadev/stream-client-node'
import streams, { createKvAdapter, createRedisAdapter, type AdapterFactory, type StreamAdapter, type StreamsOptions } from '../../lib/index.js'
import { loadConfig } from '../../lib/config.js'
import { serve, until, type Served } from '../helpers/app.js'
import { root, run } from '../helpers/cli.js'
import { freePort } from '../helpers/wait.js'
import { startRedisServer } from '../helpers/redis-server.js'

const METHODS = ['get', 'set', 'delete', 'getGroup', 'listGroups', 'listAll', 'update', 'publish', 'snapshotGroup', 'snapshotItem', 'subscribe', 'close'] as const

type Item = { id: string, [key: string]: unknown }

/** A user adapter of its own: every call delegates to an in-memory KvStore, and is counted. */
class CountingAdapter implements StreamAdapter {
  readonly calls: Record<string, number> = {}
  closed = 0
  started = 0
  private readonly inner = createKvAdapter({ storeMethod: 'in_memory' })

  private count (name: string): void { this.calls[name] = (this.calls[name] ?? 0) + 1 }
  async start () { this.started++; await this.inner.start() }
  get (...args: Parameters<StreamAdapter['get']>) { this.count('get'); return this.inner.get(...args) }
  set (...args: Parameters<StreamAdapter['set']>) { this.count('set'); return this.inner.set(...args) }
  delete (...args: Parameters<StreamAdapter['delete']>) { this.count('delete'); return this.inner.delete(...args) }
  getGroup (...args: Parameters<StreamAdapter['getGroup']>) { this.count('getGroup'); return this.inner.getGroup(...args) }
  listGroups (...args: Parameters<StreamAdapter['listGroups']>) { this.count('listGroups'); return this.inner.listGroups(...args) }
  listAll () { this.count('listAll'); return this.inner.listAll() }
  update (...args: Parameters<StreamAdapter['update']>) { this.count('update'); return this.inner.update(...args) }
  publish (...args: Parameters<StreamAdapter['publish']>) { this.count('publish'); return this.inner.publish(...args) }
  snapshotGroup (...args: Parameters<StreamAdapter['snapshotGroup']>) { this.count('snapshotGroup'); return this.inner.snapshotGroup(...args) }
  snapshotItem (...args: Parameters<StreamAdapter['snapshotItem']>) { this.count('snapshotItem'); return this.inner.snapshotItem(...args) }
  subscribe (listener: Parameters<StreamAdapter['subscribe']>[0]) { this.count('subscribe'); return this.inner.subscribe(listener) }
  async close () { this.closed++; await this.inner.close() }
}

/** A plain object with every contract method but `without`, each delegating to a fresh KvStore. */
function partialAdapter (without: string): Record<string, unknown> {
  const inner = createKvAdapter({ storeMethod: 'in_memory' }) as unknown as Record<string, (...args: unknown[]) => unknown>
  const object: Record<string, unknown> = {}
  for (const name of METHODS) if (name !== without) object[name] = inner[name].bind(inner)
  return object
}

async function openStream (url: string): Promise<Stream> {
  const stream = new Stream(url)
  // The stock client joins on open; close() before open would throw inside ws.
  await until(() => (stream as unknown as { ws: { isOpen(): boolean } }).ws.isOpen(), 'the stock client to connect')
  return stream
}

/** The stock client subscribes, gets the sync, then every change and a custom event, through `served`. */
async function endToEnd (t: Test, { app, url }: Served): Promise<void> {
  await app.streams.set('todo', 'inbox', 't1', { title: 'first' })
  const stream = await openStream(url)
  let open = true
  t.teardown(() => { if (open) stream.close() })
  const group = stream.subscribeGroup<Item>('todo', 'inbox')
  const item = stream.subscribeItem<Item>('todo', 'inbox', 't2')
  const events: unknown[] = []
  group.onEvent('ping', (data) => events.push(data))
  await until(() => group.getState().length === 1, 'the sync')
  t.same(group.getState(), [{ title: 'first', id: 't1' }], 'the sync holds the stored item (id injected)')

  await app.streams.set('todo', 'inbox', 't2', { title: 'second' })
  await app.streams.update('todo', 'inbox', 't1', [{ type: 'set', path: 'done', value: true }])
  await app.streams.delete('todo', 'inbox', 't1')
  await app.streams.send('todo', 'inbox', { type: 'ping', data: { n: 1 } })
  await until(() => events.length === 1 && group.getState().length === 1 && item.getState() !== null, 'the changes')
  t.same(group.getState(), [{ title: 'second', id: 't2' }], 'create, update and delete reached the group subscription')
  t.same(item.getState(), { title: 'second', id: 't2' }, 'the item subscription got its create')
  t.same(events, [{ n: 1 }], 'the custom event arrived')
  t.same(group.getState(), await app.streams.getGroup('todo', 'inbox'), 'the client shows what the adapter stores')
  t.same(await app.streams.listAll(), { stream: [{ id: 'todo', groups: ['inbox'] }], count: 1 })
  // Before the app closes: the stock client reconnects 2 s after a server-side close, with no error listener.
  open = false
  stream.close()
}

t.test('an adapter object given directly: works end to end, borrowed (not closed by the app)', async t => {
  const adapter = new CountingAdapter()
  await adapter.start()
  t.teardown(() => adapter.close())
  const served = await serve({ adapter })
  await endToEnd(t, served)
  for (const name of ['set', 'update', 'delete', 'publish', 'snapshotGroup', 'snapshotItem', 'subscribe']) {
    t.ok((adapter.calls[name] ?? 0) > 0, `the plugin called ${name} on the user's adapter`)
  }
  await served.app.close()
  t.equal(adapter.closed, 0, 'app.close() left the borrowed adapter open')
  t.same(await adapter.getGroup('todo', 'inbox'), [{ title: 'second', id: 't2' }], 'it still serves its data')
})

t.test('an adapter named in adapter.class, built by a factory given adapter.config: works, owned (closed)', async t => {
  const built: CountingAdapter[] = []
  const configs: unknown[] = []
  const factory: AdapterFactory = async (config) => {
    configs.push(config)
    const adapter = new CountingAdapter()
    built.push(adapter)
    return adapter
  }
  const config = { some_key: 'as given', nestedThing: { keep: ['as', 'is'] } }
  const served = await serve({ adapter: { class: 'my::Adapter', config }, adapters: { 'my::Adapter': factory } })
  t.teardown(() => served.app.close())
  t.equal(built.length, 1, 'the factory ran once')
  t.same(configs, [config], 'the factory received adapter.config unchanged (keys not folded)')
  t.equal(built[0].started, 1, 'the plugin started the adapter it built')
  await endToEnd(t, served)
  await served.app.close()
  t.equal(built[0].closed, 1, 'app.close() closed the adapter the factory built')

  // `name` is accepted in place of `class`, and a synchronous factory works too.
  const other = new CountingAdapter()
  const byName = await serve({ adapter: { name: 'mine' }, adapters: { mine: () => other } })
  t.teardown(() => byName.app.close())
  await byName.app.streams.set('s', 'g', 'x', 1)
  t.same(await byName.app.streams.getGroup('s', 'g'), [1])
  await byName.app.close()
  t.equal(other.closed, 1)
})

t.test('an adapter missing contract methods fails register with STREAMS_ERR_INVALID_ADAPTER', async t => {
  for (const without of ['update', 'snapshotGroup', 'publish', 'subscribe', 'close']) {
    const fromFactory = Fastify({ logger: false })
    t.teardown(() => fromFactory.close().catch(() => {}))
    await t.rejects(async () => {
      await fromFactory.register(streams, {
        adapter: { class: 'broken' }, adapters: { broken: () => partialAdapter(without) as unknown as StreamAdapter }
      }).ready()
    }, { code: 'STREAMS_ERR_INVALID_ADAPTER', message: new RegExp(without) }, `a factory's adapter without ${without}`)

    const direct = Fastify({ logger: false })
    t.teardown(() => direct.close().catch(() => {}))
    await t.rejects(async () => { await direct.register(streams, { adapter: partialAdapter(without) as unknown as StreamsOptions['adapter'] }).ready() },
      { code: 'STREAMS_ERR_INVALID_ADAPTER', message: new RegExp(without) }, `an adapter object without ${without}`)
  }
  const nothing = Fastify({ logger: false })
  t.teardown(() => nothing.close().catch(() => {}))
  await t.rejects(async () => { await nothing.register(streams, { adapter: { class: 'empty' }, adapters: { empty: () => null as unknown as StreamAdapter } }).ready() },
    { code: 'STREAMS_ERR_INVALID_ADAPTER' }, 'a factory returning null')
})

t.test('an unknown adapter class fails register with STREAMS_ERR_INVALID_OPTION', async t => {
  for (const adapter of [{ class: 'my::Missing' }, { class: 'modules::streams::adapters::Nope' }, { name: 'nope' }]) {
    const app = Fastify({ logger: false })
    t.teardown(() => app.close().catch(() => {}))
    await t.rejects(async () => { await app.register(streams, { adapter, adapters: { 'my::Adapter': () => new CountingAdapter() } }).ready() },
      { code: 'STREAMS_ERR_INVALID_OPTION' }, JSON.stringify(adapter))
  }
  const app = Fastify({ logger: false })
  t.teardown(() => app.close().catch(() => {}))
  await t.rejects(async () => { await app.register(streams, { adapters: { 'my::Adapter': 'not a function' as never } }).ready() },
    { code: 'STREAMS_ERR_INVALID_OPTION' }, 'a factory that is not a function')
})

t.test('a borrowed ioredis client is used and never quit by the plugin', async t => {
  const redis = await startRedisServer()
  t.teardown(() => redis.close())
  const client = new Redis(redis.url)
  t.teardown(() => { client.disconnect() })
  const served = await serve({ adapter: { class: 'modules::streams::adapters::RedisAdapter', config: { client } } })
  t.teardown(() => served.app.close())
  await endToEnd(t, served)
  t.same(JSON.parse(await client.hget('stream:todo:inbox', 't2') as string), { title: 'second', id: 't2' }, 'the plugin wrote through the Redis behind the client')
  await served.app.close()
  t.equal(client.status, 'ready', 'the client is still connected after app.close()')
  t.equal(await client.ping(), 'PONG', 'and answers')
  await client.quit()
})

t.test('createRedisAdapter builds from the config as a user writes it; given as an object it stays borrowed', async t => {
  const redis = await startRedisServer()
  t.teardown(() => redis.close())
  const adapter = await createRedisAdapter({ redis_url: redis.url, key_prefix: 'mine:' })
  await adapter.start()
  t.teardown(() => adapter.close())
  const served = await serve({ adapter })
  t.teardown(() => served.app.close())
  await endToEnd(t, served)
  await served.app.close()
  t.same(await adapter.getGroup('todo', 'inbox'), [{ title: 'second', id: 't2' }], 'still open after app.close(), under its key_prefix')
})

// ---- adapters named by a module ------------------------------------------------------------------------

/** A folder laid out like a user's project: fastify-streams installed, adapter modules, a package, configs. */
const project = mkdtempSync(join(tmpdir(), 'streams-custom-'))
t.teardown(() => rmSync(project, { recursive: true, force: true }))
function write (path: string, text: string): string {
  const file = join(project, path)
  mkdirSync(dirname(file), { recursive: true })
  writeFileSync(file, text)
  return file
}
mkdirSync(join(project, 'node_modules'))
symlinkSync(root, join(project, 'node_modules', 'fastify-streams'), 'dir')
write('package.json', '{ "type": "module" }\n')
// A user's adapter: the built-in KvStore, every stored value labelled from the adapter config.
const LABELLED = `import { createKvAdapter } from 'fastify-streams'
export function labelled (config) {
  const adapter = createKvAdapter({ store_method: 'in_memory' })
  const set = adapter.set.bind(adapter)
  adapter.set = (stream, group, id, value) => set(stream, group, id, { ...value, served_by: config.label })
  return adapter
}
`
const modulePath = write('adapters/labelled.js', `${LABELLED}export default labelled\n`)
write('adapters/as-class.js', `${LABELLED}export default class Labelled { constructor (config) { return labelled(config) } }\n`)
write('node_modules/my-streams-adapter/package.json', '{ "name": "my-streams-adapter", "type": "module", "exports": "./index.js" }\n')
write('node_modules/my-streams-adapter/index.js', `${LABELLED}export async function createAdapter (config) { return labelled(config) }\n`)
write('adapters/no-factory.js', 'export const notAFactory = 1\n')
write('adapters/broken.js', 'export default (\n')
write('adapters/incomplete.js', 'export default () => ({ get () {} })\n')
write('adapters/throws.js', 'export default () => { throw new Error(\'no backend\') }\n')

/** The stock client sees the group, synced then live, with the values the user's adapter stored. */
async function servesLabelled (t: Test, { app, url }: Served, label: string): Promise<void> {
  await app.streams.set('todo', 'inbox', 't1', { title: 'first' })
  const stream = await openStream(url)
  const group = stream.subscribeGroup<Item>('todo', 'inbox')
  await until(() => group.getState().length === 1, 'the sync')
  await app.streams.set('todo', 'inbox', 't2', { title: 'second' })
  await until(() => group.getState().length === 2, 'the live create')
  t.same(group.getState(), [{ title: 'first', id: 't1', served_by: label }, { title: 'second', id: 't2', served_by: label }],
    'the module\'s adapter stored the values, with its config')
  stream.close()
}

t.test('a YAML config names an adapter module relative to its own folder; loadConfig + the plugin serve it', async t => {
  const file = write('conf/streams.yaml', `modules:
  - class: modules::streams::StreamModule
    config:
      adapter:
        class: ../adapters/labelled.js
        config:
          label: \${ADAPTER_LABEL:unset}
`)
  const config = loadConfig(file, { env: { ADAPTER_LABEL: 'from-yaml' } })
  const served = await serve(config.options)
  t.teardown(() => served.app.close())
  await servesLabelled(t, served, 'from-yaml')
})

t.test('the standalone command serves an adapter package named in its config', async t => {
  write('app.js', `export default async function (app) {
  app.post('/todo/:id', async (request) => app.streams.set('todo', 'inbox', request.params.id, request.body))
}
`)
  const file = write('streams.yaml', `modules:
  - class: modules::streams::StreamModule
    config:
      port: \${TEST_STREAMS_PORT:1}
      host: 127.0.0.1
      adapter:
        class: my-streams-adapter
        config: { label: from-package }
app_modules: [./app.js]
`)
  const port = await freePort()
  const server = run(['--config', file], { TEST_STREAMS_PORT: String(port) })
  t.teardown(() => { server.child.kill('SIGKILL') })
  await until(() => server.stdout().includes(`ws://127.0.0.1:${port}/`) || server.child.exitCode !== null, 'the server to listen', 15000)
  t.equal(server.child.exitCode, null, `running; stderr: ${server.stderr()}`)
  const stream = await openStream(`ws://127.0.0.1:${port}/`)
  const group = stream.subscribeGroup<Item>('todo', 'inbox')
  const post = (id: string, body: unknown) => fetch(`http://127.0.0.1:${port}/todo/${id}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  t.equal((await post('t1', { title: 'first' })).status, 200)
  await until(() => group.getState().length === 1, 'the live create')
  t.same(group.getState(), [{ title: 'first', id: 't1', served_by: 'from-package' }], 'the package\'s factory (createAdapter) built the store')
  stream.close()
  server.child.kill('SIGTERM')
  t.equal(await server.exit, 0)
})

t.test('plugin options name an adapter module relative to the working directory, by absolute path or file: URL', async t => {
  const fromCwd = relative(process.cwd(), modulePath)
  for (const [how, specifier] of [
    ['relative to the working directory', fromCwd.startsWith('.') ? fromCwd : `./${fromCwd}`],
    ['absolute', modulePath],
    ['file: URL', pathToFileURL(modulePath).href],
    ['a class as the default export', join(project, 'adapters/as-class.js')]
  ]) {
    const served = await serve({ adapter: { class: specifier, config: { label: how } } })
    t.teardown(() => served.app.close())
    t.same(await served.app.streams.set('s', 'g', 'a', { v: 1 }), { old_value: null, new_value: { v: 1, id: 'a', served_by: how } }, how)
    await served.app.close()
  }
  const served = await serve({ adapter: { class: join(project, 'adapters/labelled.js'), config: { label: 'stock client' } } })
  t.teardown(() => served.app.close())
  await servesLabelled(t, served, 'stock client')
})

t.test('an adapter module that cannot serve fails register with STREAMS_ERR_INVALID_ADAPTER', async t => {
  for (const [what, specifier] of [
    ['a missing file', join(project, 'adapters/missing.js')],
    ['a missing relative file', './no-such-adapter-module.js'],
    ['a package that is not installed', 'no-such-streams-adapter'],
    ['a module without a factory', join(project, 'adapters/no-factory.js')],
    ['a module that does not parse', join(project, 'adapters/broken.js')],
    ['a factory returning an incomplete adapter', join(project, 'adapters/incomplete.js')]
  ]) {
    const app = Fastify({ logger: false })
    t.teardown(() => app.close().catch(() => {}))
    await t.rejects(async () => { await app.register(streams, { adapter: { class: specifier } }).ready() }, { code: 'STREAMS_ERR_INVALID_ADAPTER' }, what)
    t.notOk(app.hasDecorator('streams'), `${what}: no decorator`)
  }
  const app = Fastify({ logger: false })
  t.teardown(() => app.close().catch(() => {}))
  await t.rejects(async () => { await app.register(streams, { adapter: { class: join(project, 'adapters/throws.js') } }).ready() },
    { message: 'no backend' }, 'a factory that throws: its own error')
})

t.test('a YAML config naming a missing adapter module fails with STREAMS_ERR_CONFIG naming the file and key', async t => {
  const file = write('conf/missing.yaml', `modules:
  - class: modules::streams::StreamModule
    config:
      adapter: { class: ./adapters/labelled.js }
`)
  const err = t.throws(() => loadConfig(file, { env: {} }), { code: 'STREAMS_ERR_CONFIG' }) as unknown as Error
  t.ok(err.message.startsWith(`${file}: modules[0].config.adapter.class: `), err.message)

  const bin = run(['--config', write('conf/broken.yaml', 'modules:\n  - class: modules::streams::StreamModule\n    config: { adapter: { class: ../adapters/broken.js } }\n')])
  t.equal(await bin.exit, 1, 'the command exits 1 for a module that does not import')
  t.match(bin.stderr(), /broken\.yaml: STREAMS_ERR_INVALID_ADAPTER: /, 'one line naming the config file and the code')
})
