// Plugin options: both spellings accepted, every invalid option refused with STREAMS_ERR_INVALID_OPTION before
// the plugin touches anything (no decorator, no route, no file).
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import Fastify from 'fastify'
import streams, { createKvAdapter, createRedisAdapter, type KvAdapterConfig, type StreamsOptions } from '../lib/index.js'
import { RawClient, serve, until } from './helpers/app.js'
import { root } from './helpers/cli.js'

const execFileAsync = promisify(execFile)

const tmp = mkdtempSync(join(tmpdir(), 'fastify-streams-options-'))
t.teardown(() => rmSync(tmp, { recursive: true, force: true }))
let dirs = 0
/** A folder that does not exist yet: a file_based store would create it (and its file) on start. */
function freshDir (): string {
  return join(tmp, `case-${++dirs}`)
}

t.test('snake_case options are accepted and take effect', async t => {
  const authInputs: unknown[] = []
  const joins: unknown[] = []
  const { app, url } = await serve({
    auth_function: (input) => { authInputs.push(input); return { context: { who: 'snake' } } },
    auth_failure: 'reject',
    join_failure: 'allow',
    inject_id: false,
    max_payload: 4096,
    max_name_length: 32,
    max_subscriptions_per_socket: 2,
    max_buffered_bytes: 1 << 20,
    max_invalid_frames: 1,
    adapter: { class: 'modules::streams::adapters::KvStore', config: { store_method: 'in_memory' } },
    port: 3000,
    host: '127.0.0.1'
  }, app => {
    app.streams.registerFunction({ function_path: 'onJoin', handler: (input: { context: unknown }) => { joins.push(input.context); throw new Error('boom') } })
    app.streams.registerTrigger({ trigger_type: 'streams:join', function_path: 'onJoin' })
  })
  t.teardown(() => app.close())
  t.same(await app.streams.set('s', 'g', 'a', { v: 1 }), { old_value: null, new_value: { v: 1 } }, 'inject_id: false stores the value as given')
  await t.rejects(app.streams.get('s', 'g', 'x'.repeat(33)), { code: 'STREAMS_ERR_INVALID_NAME' }, 'max_name_length applies')

  const client = await RawClient.open(url)
  t.teardown(() => client.close())
  t.equal(authInputs.length, 1, 'auth_function ran')
  client.join('s', 'g')
  client.join('s', 'h')
  client.join('s', 'i')
  await until(() => client.frames.length === 3, 'three answers')
  t.same(client.frames.map(frame => frame.event.type), ['sync', 'sync', 'event'], 'join_failure: allow lets a throwing join trigger pass; max_subscriptions_per_socket: 2 refuses the third')
  t.same(joins, [{ who: 'snake' }, { who: 'snake' }], 'the auth context reached the join trigger')
  client.socket.send('garbage')
  client.socket.send('garbage')
  await until(() => client.closeCode !== null, 'close after max_invalid_frames')
  t.equal(client.closeCode, 1008, 'max_invalid_frames: 1 closes on the second bad frame')

  const big = await RawClient.open(url)
  big.socket.send(JSON.stringify({ type: 'join', data: { streamName: 's', groupId: 'g', subscriptionId: 'x'.repeat(5000) } }))
  await until(() => big.closeCode !== null, 'close for a frame over max_payload')
  t.equal(big.closeCode, 1009, 'max_payload applies')
})

t.test('camelCase options are accepted and take effect', async t => {
  const { app, url } = await serve({
    authFunction: () => { throw new Error('nope') },
    authFailure: 'anonymous',
    joinFailure: 'deny',
    injectId: true,
    maxPayload: 4096,
    maxNameLength: 32,
    maxSubscriptionsPerSocket: 1,
    maxBufferedBytes: 1 << 20,
    maxInvalidFrames: 5,
    adapter: { class: 'modules::streams::adapters::KvStore', config: { storeMethod: 'in_memory' } }
  }, app => {
    app.streams.registerFunction({ function_path: 'onJoin', handler: () => { throw new Error('boom') } })
    app.streams.registerTrigger({ trigger_type: 'streams:join', function_path: 'onJoin' })
  })
  t.teardown(() => app.close())
  t.same(await app.streams.set('s', 'g', 'a', { v: 1 }), { old_value: null, new_value: { v: 1, id: 'a' } }, 'injectId: true adds the id')
  const client = await RawClient.open(url)
  t.teardown(() => client.close())
  client.join('s', 'g')
  await until(() => client.frames.length === 1, 'an answer')
  t.equal(client.frames[0].event.type, 'unauthorized', 'authFailure: anonymous let the socket in; joinFailure: deny refused the join')
})

t.test('the adapter config in both spellings: file_path / filePath create the SQLite file', async t => {
  for (const config of [
    (dir: string) => ({ store_method: 'file_based', file_path: join(dir, 'snake.db') }) as const,
    (dir: string) => ({ storeMethod: 'file_based', filePath: join(dir, 'camel.db') }) as const
  ]) {
    const dir = freshDir()
    const adapterConfig = config(dir)
    const file = (adapterConfig as { file_path?: string, filePath?: string }).file_path ?? (adapterConfig as { filePath: string }).filePath
    const first = Fastify({ logger: false })
    await first.register(streams, { adapter: { class: 'modules::streams::adapters::KvStore', config: adapterConfig } })
    t.ok(existsSync(file), `the file exists: ${file}`)
    await first.streams.set('s', 'g', 'a', { kept: true })
    await first.close()
    const second = Fastify({ logger: false })
    await second.register(streams, { adapter: { class: 'kv', config: adapterConfig } })
    t.same(await second.streams.get('s', 'g', 'a'), { kept: true, id: 'a' }, 'the data survived a restart')
    await second.close()
  }
})

t.test('both spellings of one option with the same value are accepted', async t => {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  await app.register(streams, {
    inject_id: false,
    injectId: false,
    max_payload: 1000,
    maxPayload: 1000,
    adapter: { config: { store_method: 'in_memory', storeMethod: 'in_memory' } }
  })
  t.same(await app.streams.set('s', 'g', 'a', { v: 1 }), { old_value: null, new_value: { v: 1 } })
})

t.test('other adapter spellings are accepted', async t => {
  for (const adapter of [
    { class: 'modules::stream::adapters::KvStore' },
    { name: 'kv' },
    { name: 'kv', config: { store_method: 'in_memory' } },
    {}
  ] as const) {
    const app = Fastify({ logger: false })
    await app.register(streams, { adapter })
    t.same(await app.streams.set('s', 'g', 'a', 1), { old_value: null, new_value: 1 }, JSON.stringify(adapter))
    await app.close()
  }
})

t.test('port and host are tolerated and ignored: the seed\'s config block registers unchanged', async t => {
  // The standalone command reads and checks them (test/config.test.ts); the plugin never does, whatever they hold
  // (here even a placeholder left unexpanded).
  // eslint-disable-next-line no-template-curly-in-string
  for (const listen of [{ port: 4321, host: '0.0.0.0' }, { port: '${STREAMS_PORT:31112}', host: '' }, { port: -1, host: 5 }]) {
    const { app, url } = await serve({
      ...listen,
      auth_function: 'onAuth',
      adapter: { class: 'modules::streams::adapters::KvStore', config: { store_method: 'in_memory', save_interval_ms: 5000, channel_size: 256 } }
    }, app => { app.streams.registerFunction({ function_path: 'onAuth', handler: () => ({ context: null }) }) })
    t.teardown(() => app.close())
    t.notMatch(url, /:4321\//, 'the app still listens where it was told')
    const client = await RawClient.open(url)
    t.teardown(() => client.close())
    client.join('s', 'g')
    await until(() => client.frames.length === 1, 'sync')
    t.equal(client.frames[0].event.type, 'sync', JSON.stringify(listen))
  }
})

t.test('the engine\'s no-op KvStore keys are accepted at the ends of the engine\'s ranges, and change_log too', async t => {
  for (const config of <KvAdapterConfig[]>[
    { store_method: 'in_memory', save_interval_ms: 100, channel_size: 1 },
    { storeMethod: 'in_memory', saveIntervalMs: 3_600_000, channelSize: 1_048_576 },
    { store_method: 'in_memory', change_log: { max_changes: 0 } },
    { store_method: 'file_based', file_path: join(freshDir(), 'x.db'), change_log: { max_changes: 50, max_age_ms: 60_000 } },
    { storeMethod: 'in_memory', changeLog: { maxChanges: 10, maxAgeMs: 1 } }
  ]) {
    const app = Fastify({ logger: false })
    await app.register(streams, { adapter: { class: 'kv', config } })
    t.same(await app.streams.set('s', 'g', 'a', 1), { old_value: null, new_value: 1 }, JSON.stringify(config))
    await app.close()
  }
})

t.test('every invalid option fails register with STREAMS_ERR_INVALID_OPTION and has no side effect', async t => {
  type Case = [string, (dir: string) => StreamsOptions]
  const file = (dir: string) => ({ class: 'modules::streams::adapters::KvStore' as const, config: { store_method: 'file_based' as const, file_path: join(dir, 'streams.db') } })
  // Each top-level case also carries a valid file_based adapter: no file (nor its folder) may appear.
  const top = (label: string, options: Record<string, unknown>): Case => [label, dir => ({ adapter: file(dir), ...options }) as StreamsOptions]
  const cases: Case[] = [
    top('an unknown key', { colour: 'blue' }),
    top('an unknown snake_case key', { max_frobs: 1 }),
    top('path not a string', { path: 3 }),
    top('path empty', { path: '' }),
    top('path without a leading slash', { path: 'streams' }),
    top('auth_function a number', { auth_function: 42 }),
    top('auth_function an empty string', { auth_function: '' }),
    top('authFunction an object', { authFunction: {} }),
    top('authFailure unknown', { authFailure: 'maybe' }),
    top('auth_failure unknown', { auth_failure: true }),
    top('joinFailure unknown', { joinFailure: 'sometimes' }),
    top('inject_id a string', { inject_id: 'yes' }),
    top('injectId a number', { injectId: 1 }),
    top('maxPayload zero', { maxPayload: 0 }),
    top('max_payload negative', { max_payload: -1 }),
    top('maxPayload fractional', { maxPayload: 1.5 }),
    top('maxPayload a string', { maxPayload: '1024' }),
    top('maxPayload NaN', { maxPayload: Number.NaN }),
    top('maxPayload infinite', { maxPayload: Number.POSITIVE_INFINITY }),
    top('max_name_length zero', { max_name_length: 0 }),
    top('maxSubscriptionsPerSocket negative', { maxSubscriptionsPerSocket: -5 }),
    top('max_buffered_bytes zero', { max_buffered_bytes: 0 }),
    top('maxInvalidFrames zero', { maxInvalidFrames: 0 }),
    top('adapters not an object', { adapters: [] }),
    top('adapters holding a non-function', { adapters: { mine: 1 } }),
    top('auth_function and authFunction with different values', { auth_function: 'a', authFunction: 'b' }),
    top('inject_id and injectId with different values', { inject_id: true, injectId: false }),
    top('max_payload and maxPayload with different values', { max_payload: 10, maxPayload: 20 }),
    ['adapter a string', () => ({ adapter: 'kv' as never })],
    ['adapter an array', () => ({ adapter: [] as never })],
    ['adapter null', () => ({ adapter: null as never })],
    ['adapter with an unknown key', dir => ({ adapter: { ...file(dir), extra: 1 } as never })],
    ['adapter class unknown', dir => ({ adapter: { ...file(dir), class: 'modules::streams::adapters::Nope' } as never })],
    ['adapter class a number', dir => ({ adapter: { ...file(dir), class: 42 as never } as never })],
    ['adapter class empty', dir => ({ adapter: { ...file(dir), class: '' } as never })],
    ['adapter with both class and name', dir => ({ adapter: { ...file(dir), name: 'kv' } as never })],
    ['adapter config an array', () => ({ adapter: { class: 'kv', config: [] as never } })],
    ['store_method unknown', dir => ({ adapter: { class: 'kv', config: { store_method: 'on_disk', file_path: join(dir, 'x.db') } } as never })],
    ['storeMethod a number', dir => ({ adapter: { class: 'kv', config: { storeMethod: 1, filePath: join(dir, 'x.db') } } as never })],
    ['file_path empty', () => ({ adapter: { class: 'kv', config: { store_method: 'file_based', file_path: '' } } as never })],
    ['file_path a number', () => ({ adapter: { class: 'kv', config: { store_method: 'file_based', file_path: 7 } } as never })],
    ['an unknown adapter config key', dir => ({ adapter: { class: 'kv', config: { store_method: 'file_based', file_path: join(dir, 'x.db'), colour: 'red' } } })],
    ['store_method and storeMethod with different values', dir => ({ adapter: { class: 'kv', config: { store_method: 'in_memory', storeMethod: 'file_based', file_path: join(dir, 'x.db') } } })],
    ['file_path and filePath with different values', dir => ({ adapter: { class: 'kv', config: { store_method: 'file_based', file_path: join(dir, 'a.db'), filePath: join(dir, 'b.db') } } })],
    ['redis_url not a redis URL', () => ({ adapter: { class: 'modules::streams::adapters::RedisAdapter', config: { redis_url: 'http://localhost:6379' } } })],
    ['a KvStore key on the Redis adapter', () => ({ adapter: { class: 'redis', config: { store_method: 'in_memory' } } as never })],
    ['redis connect_timeout_ms zero', () => ({ adapter: { class: 'redis', config: { connect_timeout_ms: 0 } } })],
    ['save_interval_ms below the engine\'s 100', dir => ({ adapter: { ...file(dir), config: { ...file(dir).config, save_interval_ms: 99 } } })],
    ['saveIntervalMs above the engine\'s 3 600 000', dir => ({ adapter: { ...file(dir), config: { ...file(dir).config, saveIntervalMs: 3_600_001 } } })],
    ['save_interval_ms a string', dir => ({ adapter: { ...file(dir), config: { ...file(dir).config, save_interval_ms: '5000' } } as never })],
    ['channel_size zero', dir => ({ adapter: { ...file(dir), config: { ...file(dir).config, channel_size: 0 } } })],
    ['channelSize above the engine\'s 1 048 576', dir => ({ adapter: { ...file(dir), config: { ...file(dir).config, channelSize: 1_048_577 } } })],
    ['change_log not an object', dir => ({ adapter: { ...file(dir), config: { ...file(dir).config, change_log: 10 } } as never })],
    ['change_log.max_changes negative', dir => ({ adapter: { ...file(dir), config: { ...file(dir).config, change_log: { max_changes: -1 } } } })],
    ['change_log.max_age_ms zero', dir => ({ adapter: { ...file(dir), config: { ...file(dir).config, change_log: { max_age_ms: 0 } } } })],
    ['change_log with an unknown key', dir => ({ adapter: { ...file(dir), config: { ...file(dir).config, change_log: { size: 1 } } } as never })],
    ['redis change_log.maxChanges fractional', () => ({ adapter: { class: 'redis', config: { changeLog: { maxChanges: 1.5 } } } })],
    ['a module path given as adapter.name (only class names a module)', () => ({ adapter: { name: './my-adapter.js' } })],
    ['adapter.class neither a known class, a path nor a package name', () => ({ adapter: { class: 'not an adapter!' } })]
  ]
  for (const [label, make] of cases) {
    const dir = freshDir()
    const app = Fastify({ logger: false })
    await t.rejects(async () => { await app.register(streams, make(dir)) }, { code: 'STREAMS_ERR_INVALID_OPTION' }, label)
    t.notOk(app.hasDecorator('streams'), `${label}: no decorator`)
    t.notOk(app.hasRoute({ method: 'GET', url: '/' }), `${label}: no route`)
    t.notOk(existsSync(dir), `${label}: no file or folder created`)
    await app.close().catch(() => {})
  }
})

t.test('a refusal names the key as the user spelled it, in the error\'s key and reason', async t => {
  const redis = (config: Record<string, unknown>) => ({ adapter: { class: 'modules::streams::adapters::RedisAdapter', config } })
  const cases: Array<[unknown, string]> = [
    [redis({ redis_url: 'http://x' }), 'adapter.config.redis_url'],
    [redis({ redisUrl: 'http://x' }), 'adapter.config.redisUrl'],
    [redis({ command_timeout_ms: 0 }), 'adapter.config.command_timeout_ms'],
    [redis({ change_log: { max_changes: -1 } }), 'adapter.config.change_log.max_changes'],
    [redis({ changeLog: { maxAgeMs: 0 } }), 'adapter.config.changeLog.maxAgeMs'],
    [{ adapter: { name: 'kv', config: { store_method: 'x' } } }, 'adapter.config.store_method'],
    [{ adapter: { name: 'kv', config: { store_mehtod: 'x' } } }, 'adapter.config.store_mehtod'],
    [{ adapter: { class: 'kv', config: { save_interval_ms: 50 } } }, 'adapter.config.save_interval_ms'],
    [{ max_payload: 0 }, 'max_payload'],
    [{ maxPayload: 0 }, 'maxPayload'],
    [{ auth_failure: 'maybe' }, 'auth_failure'],
    [{ inject_id: true, injectId: false }, 'injectId'],
    [{ adapters: { mine: 1 } }, 'adapters.mine'],
    [{ adapter: { class: 'my::Missing' } }, 'adapter.class'],
    ['not an object', '']
  ]
  for (const [options, key] of cases) {
    const app = Fastify({ logger: false })
    const err = await app.register(streams, options as StreamsOptions).ready().then(() => null, (err: unknown) => err) as { code?: string, key?: string, reason?: string } | null
    t.equal(err?.code, 'STREAMS_ERR_INVALID_OPTION', JSON.stringify(options))
    t.equal(err?.key, key, `key ${JSON.stringify(key)}`)
    t.ok(typeof err?.reason === 'string' && err.reason.length > 0, 'a reason')
    await app.close().catch(() => {})
  }
})

t.test('createKvAdapter and createRedisAdapter take the config as a user writes it', async t => {
  const dir = freshDir()
  const adapter = createKvAdapter({ store_method: 'file_based', file_path: join(dir, 'kv.db') })
  await adapter.start()
  t.ok(existsSync(join(dir, 'kv.db')), 'file_path in snake_case made the SQLite file')
  await adapter.close()
  const camel = createKvAdapter({ storeMethod: 'file_based', filePath: join(dir, 'kv.db') })
  await camel.start()
  t.same((await camel.snapshotGroup('s', 'g')).items, [], 'camelCase opens the same file')
  await camel.close()
  t.throws(() => createKvAdapter({ file_path: 3 } as never), { code: 'STREAMS_ERR_INVALID_OPTION', key: 'file_path' })
  t.throws(() => createKvAdapter({ channelSize: 0 }), { code: 'STREAMS_ERR_INVALID_OPTION', key: 'channelSize' })
  await t.rejects(createRedisAdapter({ redis_url: 'http://x' }), { code: 'STREAMS_ERR_INVALID_OPTION', key: 'redis_url' })
  await t.rejects(createRedisAdapter({ connectTimeoutMs: -1 }), { code: 'STREAMS_ERR_INVALID_OPTION', key: 'connectTimeoutMs' })
  await t.rejects(createRedisAdapter({ kind: 'redis' } as never), { code: 'STREAMS_ERR_INVALID_OPTION', key: 'kind' }, 'one shape: the checked form is not accepted')
})

t.test('checking options loads no storage backend; a memory app never loads ioredis', async t => {
  // In a child process, on the built package, so this process's own imports do not count.
  const script = `
    import { createRequire } from 'node:module'
    const require = createRequire(import.meta.url)
    const loaded = () => Object.keys(require.cache).map(file => /node_modules[/](ioredis|sqlite3|@keyv[/]sqlite)[/]/.exec(file)?.[1]).filter(Boolean)
    const { normalizeOptions } = await import('./dist/options.js')
    normalizeOptions({ adapter: { class: 'redis', config: { redis_url: 'redis://h:1' } } })
    normalizeOptions({ adapter: { class: 'kv', config: { store_method: 'file_based' } } })
    const afterOptions = [...new Set(loaded())]
    const { default: Fastify } = await import('fastify')
    const { default: streams } = await import('./dist/index.js')
    const app = Fastify()
    await app.register(streams)
    await app.close()
    process.stdout.write(JSON.stringify({ afterOptions, afterMemoryApp: [...new Set(loaded())] }))
  `
  const { stdout } = await execFileAsync(process.execPath, ['--input-type=module', '-e', script], { cwd: root })
  const { afterOptions, afterMemoryApp } = JSON.parse(stdout) as { afterOptions: string[], afterMemoryApp: string[] }
  t.same(afterOptions, [], 'options of a Redis and a SQLite adapter checked without loading either')
  t.notOk(afterMemoryApp.includes('ioredis'), `a memory app does not load ioredis (loaded: ${afterMemoryApp.join(', ') || 'none'})`)
})

t.test('an invalid option given through app.ready() fails the same way', async t => {
  const app = Fastify({ logger: false })
  app.register(streams, { maxPayload: -1 })
  await t.rejects(async () => { await app.ready() }, { code: 'STREAMS_ERR_INVALID_OPTION' })
  t.notOk(app.hasDecorator('streams'))
  await app.close().catch(() => {})
})
