// The YAML config loader (lib/config.ts) and the standalone command (bin/fastify-streams.js).
/* eslint-disable no-template-curly-in-string -- these tests write ${VAR} placeholders on purpose */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import t from 'tap'
import { cliModule, importAppModule, loadConfig, parseConfig } from '../lib/config.js'
import { run } from './helpers/cli.js'
import { freePort, waitFor } from './helpers/wait.js'

function tmp (): string {
  const dir = mkdtempSync(join(tmpdir(), 'streams-config-'))
  writeFileSync(join(dir, 'package.json'), '{ "type": "module" }\n')
  return dir
}

function write (dir: string, name: string, text: string): string {
  const file = join(dir, name)
  mkdirSync(dirname(file), { recursive: true })
  writeFileSync(file, text)
  return file
}

const SEED = `modules:
  - class: modules::streams::StreamModule
    config:
      port: \${STREAMS_PORT:31112}
      host: 0.0.0.0
      auth_function: motia.streams.authenticate
      adapter:
        class: modules::streams::adapters::RedisAdapter
        config:
          redis_url: \${REDIS_URL:redis://localhost:6379}

  - class: modules::api::RestApiModule
    config:
      port: 3111
      host: 0.0.0.0
`

t.test('the seed shape (modules::streams, class adapters) with defaults from placeholders', async t => {
  const config = parseConfig(SEED, '/cfg/config.yaml', { env: {} })
  t.equal(config.port, 31112)
  t.equal(typeof config.port, 'number')
  t.equal(config.host, '0.0.0.0')
  t.same(config.options, {
    auth_function: 'motia.streams.authenticate',
    adapter: { class: 'modules::streams::adapters::RedisAdapter', config: { redis_url: 'redis://localhost:6379' } }
  })
  t.match(config.normalized.adapter, { kind: 'redis', config: { redisUrl: 'redis://localhost:6379' } })
  t.equal(config.normalized.authFunction, 'motia.streams.authenticate')
  t.same(config.ignored, ['modules::api::RestApiModule'])
  t.same(config.modules, [])
})

t.test('${VAR:default} takes the variable when it is set', async t => {
  const config = parseConfig(SEED, '/cfg/config.yaml', { env: { STREAMS_PORT: '4000', REDIS_URL: 'redis://cache:6380/2' } })
  t.equal(config.port, 4000)
  t.match(config.normalized.adapter, { kind: 'redis', config: { redisUrl: 'redis://cache:6380/2' } })
})

t.test('an empty variable counts as unset and takes the default', async t => {
  const config = parseConfig(SEED, '/cfg/config.yaml', { env: { STREAMS_PORT: '' } })
  t.equal(config.port, 31112)
})

t.test('${VAR} without a default: expanded when set, a ConfigError naming the key when not', async t => {
  const text = 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      auth_function: ${AUTH_FN}\n'
  t.equal(parseConfig(text, '/cfg/a.yaml', { env: { AUTH_FN: 'auth.check' } }).normalized.authFunction, 'auth.check')
  t.throws(() => parseConfig(text, '/cfg/a.yaml', { env: {} }), {
    code: 'STREAMS_ERR_CONFIG',
    message: /\/cfg\/a\.yaml: modules\[0\]\.config\.auth_function: .*AUTH_FN is not set/
  })
})

t.test('placeholders inside a longer string, and quoted placeholders stay strings', async t => {
  const text = `modules:
  - class: modules::streams::StreamModule
    config:
      path: /ws/\${TENANT:main}/
      host: "\${HOST:127.0.0.1}"
`
  const config = parseConfig(text, '/cfg/b.yaml', { env: { TENANT: 'acme' } })
  t.equal(config.options.path, '/ws/acme/')
  t.equal(config.host, '127.0.0.1')
  const quotedPort = 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      port: "${P:31112}"\n'
  t.throws(() => parseConfig(quotedPort, '/cfg/b.yaml', { env: {} }), { code: 'STREAMS_ERR_CONFIG', message: /modules\[0\]\.config\.port: expected an integer/ })
})

t.test('the later spellings: modules::stream::StreamModule, name: kv, and the worker list with name: iii-stream', async t => {
  const later = `modules:
  - class: modules::stream::StreamModule
    config:
      port: 3112
      adapter:
        class: modules::stream::adapters::KvStore
        config: { store_method: file_based, file_path: ./data/x.db }
`
  const a = parseConfig(later, '/cfg/c.yaml', { env: {} })
  t.equal(a.port, 3112)
  t.match(a.normalized.adapter, { kind: 'kv', config: { storeMethod: 'file_based', filePath: './data/x.db' } })

  const worker = `workers:
  - name: iii-other
  - name: iii-stream
    config:
      host: 127.0.0.1
      adapter:
        name: kv
        config:
          store_method: in_memory
`
  const b = parseConfig(worker, '/cfg/d.yaml', { env: {} })
  t.equal(b.host, '127.0.0.1')
  t.equal(b.port, 31112)
  t.match(b.normalized.adapter, { kind: 'kv', config: { storeMethod: 'in_memory' } })
  t.same(b.ignored, ['iii-other'])

  const redis = 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      adapter: { name: redis, config: { redis_url: "redis://r:1" } }\n'
  t.match(parseConfig(redis, '/cfg/e.yaml', { env: {} }).normalized.adapter, { kind: 'redis', config: { redisUrl: 'redis://r:1' } })
})

t.test('defaults: no file, an empty file, a streams module without config', async t => {
  const none = loadConfig(null, { env: {} })
  t.equal(none.file, null)
  t.equal(none.port, 31112)
  t.equal(none.host, '0.0.0.0')
  t.match(none.normalized.adapter, { kind: 'kv', config: { storeMethod: 'in_memory' } })
  t.equal(loadConfig(null, { env: { STREAMS_PORT: '5000' } }).port, 5000)

  const empty = parseConfig('', '/cfg/empty.yaml', { env: {} })
  t.equal(empty.port, 31112)
  t.match(empty.normalized.adapter, { kind: 'kv', config: { storeMethod: 'in_memory' } })

  const bare = parseConfig('modules:\n  - class: modules::streams::StreamModule\n', '/cfg/bare.yaml', { env: {} })
  t.equal(bare.host, '0.0.0.0')
  t.same(bare.options, {})
})

t.test('our own options in the module config: snake_case and camelCase', async t => {
  const text = `modules:
  - class: modules::streams::StreamModule
    config:
      auth_failure: anonymous
      joinFailure: allow
      inject_id: false
      max_payload: 1024
`
  const config = parseConfig(text, '/cfg/f.yaml', { env: {} })
  t.match(config.normalized, { authFailure: 'anonymous', joinFailure: 'allow', injectId: false, maxPayload: 1024 })
})

t.test('app_modules: paths relative to the config file, strings or { path, options }', async t => {
  const dir = tmp()
  write(dir, 'mods/one.js', 'export default async function one () {}\n')
  write(dir, 'two.mjs', 'export default async function two () {}\n')
  const file = write(dir, 'conf/config.yaml', `modules:
  - class: modules::streams::StreamModule
app_modules:
  - ../mods/one.js
  - path: ../two.mjs
    options: { greeting: hi }
`)
  const config = loadConfig(file, { env: {} })
  t.same(config.modules, [
    { path: join(dir, 'mods/one.js'), options: {}, key: 'app_modules[0]' },
    { path: join(dir, 'two.mjs'), options: { greeting: 'hi' }, key: 'app_modules[1].path' }
  ])
  t.equal(typeof await importAppModule(config.modules[0]), 'function')
  t.same(cliModule('mods/one.js', dir), { path: join(dir, 'mods/one.js'), options: {}, key: '--module' })
})

// Every error: code STREAMS_ERR_CONFIG, message `<file>: <key>: <expected>`.
const errorCases: Array<{ name: string, text: string, key: RegExp, expected: RegExp }> = [
  {
    name: 'bad YAML',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config: [unclosed\n',
    key: /line \d+, column \d+/,
    expected: /invalid YAML/
  },
  {
    name: 'a duplicate key',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      port: 1\n      port: 2\n',
    key: /line \d+, column \d+/,
    expected: /invalid YAML: .*unique/i
  },
  {
    name: 'an unknown top-level key',
    text: 'modules: []\nstreams: {}\n',
    key: /: streams: /,
    expected: /unknown key \(expected one of modules, workers, app_modules\)/
  },
  {
    name: 'an unknown key in the module entry',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    confg: {}\n',
    key: /: modules\[0\]\.confg: /,
    expected: /unknown key/
  },
  {
    name: 'an unknown key in the module config',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      prot: 1\n',
    key: /: modules\[0\]\.config\.prot: /,
    expected: /unknown key/
  },
  {
    name: 'an unknown key in the adapter config',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      adapter:\n        class: modules::streams::adapters::KvStore\n        config: { store_mehtod: in_memory }\n',
    key: /: modules\[0\]\.config\.adapter\.config\.store_mehtod: /,
    expected: /unknown key/
  },
  {
    name: 'a bad store_method',
    text: 'modules:\n  - name: iii-other\n  - class: modules::streams::StreamModule\n    config:\n      adapter:\n        class: modules::streams::adapters::KvStore\n        config: { store_method: on_disk }\n',
    key: /: modules\[1\]\.config\.adapter\.config\.store_method: /,
    expected: /expected one of 'in_memory', 'file_based'/
  },
  {
    name: 'a bad port',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      port: 70000\n',
    key: /: modules\[0\]\.config\.port: /,
    expected: /expected an integer from 0 to 65535/
  },
  {
    name: 'a port from a variable that is not a number',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      port: ${NOT_A_PORT_VAR:http}\n',
    key: /: modules\[0\]\.config\.port: /,
    expected: /expected an integer/
  },
  {
    name: 'a port that is a quoted string',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      port: "3000"\n',
    key: /: modules\[0\]\.config\.port: /,
    expected: /expected an integer from 0 to 65535/
  },
  {
    name: 'a fractional port',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      port: 80.5\n',
    key: /: modules\[0\]\.config\.port: /,
    expected: /expected an integer from 0 to 65535/
  },
  {
    name: 'an empty host',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      host: ""\n',
    key: /: modules\[0\]\.config\.host: /,
    expected: /expected a non-empty string/
  },
  {
    name: 'a host that is a number',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      host: 5\n',
    key: /: modules\[0\]\.config\.host: /,
    expected: /expected a non-empty string/
  },
  {
    name: 'save_interval_ms below the engine\'s range',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      adapter:\n        name: kv\n        config: { save_interval_ms: 50 }\n',
    key: /: modules\[0\]\.config\.adapter\.config\.save_interval_ms: /,
    expected: /expected an integer from 100 to 3600000/
  },
  {
    name: 'channel_size above the engine\'s range',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      adapter:\n        name: kv\n        config: { channel_size: 1048577 }\n',
    key: /: modules\[0\]\.config\.adapter\.config\.channel_size: /,
    expected: /expected an integer from 1 to 1048576/
  },
  {
    name: 'a camelCase adapter key (reported as spelled)',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      adapter: { name: redis, config: { redisUrl: "http://x", change_log: { max_changes: 5 } } }\n',
    key: /: modules\[0\]\.config\.adapter\.config\.redisUrl: /,
    expected: /redis:\/\//
  },
  {
    name: 'a bad change_log key (reported as spelled)',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      adapter: { name: redis, config: { change_log: { max_age_ms: 0 } } }\n',
    key: /: modules\[0\]\.config\.adapter\.config\.change_log\.max_age_ms: /,
    expected: /expected a positive integer/
  },
  {
    name: 'an adapter module path to a missing file',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      adapter: { class: ./adapters/none.js }\n',
    key: /: modules\[0\]\.config\.adapter\.class: /,
    expected: /adapter module not found: .*adapters\/none\.js/
  },
  {
    name: 'a bad auth_failure (reported as spelled)',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      auth_failure: maybe\n',
    key: /: modules\[0\]\.config\.auth_failure: /,
    expected: /expected one of 'reject', 'anonymous'/
  },
  {
    name: 'an unknown adapter class',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      adapter: { class: modules::streams::adapters::Mongo }\n',
    key: /: modules\[0\]\.config\.adapter\.class: /,
    expected: /unknown adapter/
  },
  {
    name: 'a bad redis_url',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      adapter: { name: redis, config: { redis_url: "http://x" } }\n',
    key: /: modules\[0\]\.config\.adapter\.config\.redis_url: /,
    expected: /redis:\/\//
  },
  {
    name: 'modules is not a list',
    text: 'modules:\n  class: modules::streams::StreamModule\n',
    key: /: modules: /,
    expected: /expected a list of modules/
  },
  {
    name: 'no streams module among the modules',
    text: 'modules:\n  - class: modules::api::RestApiModule\n',
    key: /: modules: /,
    expected: /expected an entry with class modules::streams::StreamModule/
  },
  {
    name: 'two streams modules',
    text: 'modules:\n  - class: modules::streams::StreamModule\n  - name: iii-stream\n',
    key: /: modules\[1\]: /,
    expected: /only one streams module/
  },
  {
    name: 'a module config that is not a mapping',
    text: 'modules:\n  - class: modules::streams::StreamModule\n    config: 3\n',
    key: /: modules\[0\]\.config: /,
    expected: /expected a mapping/
  },
  {
    name: 'the root is not a mapping',
    text: '- a\n- b\n',
    key: /: \(root\): /,
    expected: /expected a mapping/
  },
  {
    name: 'app_modules names a missing file',
    text: 'app_modules:\n  - ./nope.js\n',
    key: /: app_modules\[0\]: /,
    expected: /module file not found/
  },
  {
    name: 'app_modules is not a list',
    text: 'app_modules: ./app.js\n',
    key: /: app_modules: /,
    expected: /expected a list/
  }
]

for (const c of errorCases) {
  t.test(`error: ${c.name}`, async t => {
    const dir = tmp()
    const file = write(dir, 'config.yaml', c.text)
    const err = t.throws(() => loadConfig(file, { env: {} }), { code: 'STREAMS_ERR_CONFIG' }) as unknown as Error
    t.ok(err.message.startsWith(`${file}: `), `message names the file: ${err.message}`)
    t.match(err.message, c.key, 'names the key')
    t.match(err.message, c.expected, 'says what was expected')
  })
}

t.test('error: a missing file', async t => {
  const file = join(tmp(), 'missing.yaml')
  t.throws(() => loadConfig(file), { code: 'STREAMS_ERR_CONFIG', message: `${file}: (file): file not found` })
})

t.test('error: a module without a plugin as default export, and one that does not import', async t => {
  const dir = tmp()
  write(dir, 'nodefault.js', 'export const x = 1\n')
  write(dir, 'broken.js', 'export default (\n')
  const file = write(dir, 'config.yaml', 'app_modules: [./nodefault.js, ./broken.js]\n')
  const config = loadConfig(file, { env: {} })
  await t.rejects(importAppModule(config.modules[0]), { code: 'STREAMS_ERR_CONFIG', message: /nodefault\.js: app_modules\[0\]: expected a default export/ })
  await t.rejects(importAppModule(config.modules[1]), { code: 'STREAMS_ERR_CONFIG', message: /broken\.js: app_modules\[1\]: cannot import the module/ })
  t.throws(() => cliModule('nope.js', dir), { code: 'STREAMS_ERR_CONFIG', message: /nope\.js: --module: module file not found/ })
})

// ---- the standalone command ------------------------------------------------------------------------------

t.test('bin: serves a config, answers a stream client, exits 0 on SIGTERM', async t => {
  const dir = tmp()
  write(dir, 'app.js', `export default async function (app) {
  app.get('/hello', async () => ({ hello: await app.streams.getGroup('s', 'g') }))
}
`)
  const file = write(dir, 'config.yaml', `modules:
  - class: modules::streams::StreamModule
    config:
      port: \${TEST_STREAMS_PORT:1}
      host: 127.0.0.1
app_modules: [./app.js]
`)
  const port = await freePort()
  const server = run(['--config', file], { TEST_STREAMS_PORT: String(port) })
  t.teardown(() => { server.child.kill('SIGKILL') })
  await waitFor(() => server.stdout().includes(`ws://127.0.0.1:${port}/`) || server.child.exitCode !== null, 'the command to listen', 15_000)
  t.equal(server.child.exitCode, null, `running; stderr: ${server.stderr()}`)
  const res = await fetch(`http://127.0.0.1:${port}/hello`)
  t.same(await res.json(), { hello: [] }, 'the app module is registered after the plugin')

  const { WebSocket } = await import('ws')
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`)
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  const reply = new Promise<string>(resolve => ws.once('message', data => resolve(String(data))))
  ws.send(JSON.stringify({ type: 'join', data: { streamName: 's', groupId: 'g', subscriptionId: 'x' } }))
  t.match(JSON.parse(await reply), { streamName: 's', groupId: 'g', event: { type: 'sync', data: [] } })
  const closed = new Promise(resolve => ws.once('close', resolve))

  server.child.kill('SIGTERM')
  t.equal(await server.exit, 0, 'exit code 0')
  await closed
  t.pass('the socket was closed')
})

t.test('bin: --port and --module flags override the config', async t => {
  const dir = tmp()
  write(dir, 'mod.js', 'export default async function (app) { app.get(\'/mod\', async () => ({ ok: true })) }\n')
  const port = await freePort()
  const server = run(['--port', String(port), '--host', '127.0.0.1', '--module', join(dir, 'mod.js')])
  t.teardown(() => { server.child.kill('SIGKILL') })
  await waitFor(() => server.stdout().includes(`ws://127.0.0.1:${port}/`) || server.child.exitCode !== null, 'the command to listen', 15_000)
  t.same(await (await fetch(`http://127.0.0.1:${port}/mod`)).json(), { ok: true })
  server.child.kill('SIGINT')
  t.equal(await server.exit, 0)
})

t.test('bin: a bad config exits non-zero with one line naming file and key', async t => {
  const file = write(tmp(), 'bad.yaml', 'modules:\n  - class: modules::streams::StreamModule\n    config:\n      adapter: { name: kv, config: { store_method: nowhere } }\n')
  const bad = run(['--config', file])
  t.equal(await bad.exit, 1)
  const lines = bad.stderr().trim().split('\n')
  t.equal(lines.length, 1, 'one line, no stack')
  t.match(lines[0], `${file}: modules[0].config.adapter.config.store_method: expected one of`)

  const missing = run(['--config', join(tmp(), 'nope.yaml')])
  t.equal(await missing.exit, 1)
  t.match(missing.stderr(), /nope\.yaml: \(file\): file not found/)

  const usage = run(['--bogus'])
  t.equal(await usage.exit, 2)
  t.match(usage.stderr(), /--bogus/)

  const help = run(['--help'])
  t.equal(await help.exit, 0)
  t.match(help.stdout(), /--config/)
})
