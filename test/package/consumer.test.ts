// A fresh app installs the packed package as a user would, next to an older Fastify 5 than ours: it gets one
// Fastify (its own), its TypeScript (ESM) and CommonJS code type-check strictly against the package's types, the
// README's code blocks type-check as files of that app (rules in ./readme.ts), `require('fastify-streams')`
// works, and the README's main sample runs and serves the stock Node.js client.
import { spawn } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Stream } from '@motiadev/stream-client-node'
import t from 'tap'
import ts from 'typescript'
import { RawClient, until } from '../helpers/app.js'
import { root } from '../helpers/cli.js'
import { consumerApp, STRICT_TSCONFIG, typecheck } from './consumer.js'
import { mainSample, readmeBlocks } from './readme.js'

/** The oldest Fastify the peer range admits; the suite itself runs on the newest. */
const OLDER_FASTIFY = '5.0.0'
const devDependencies = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).devDependencies as Record<string, string>

const consumer = await consumerApp('app', {
  fastify: OLDER_FASTIFY,
  '@types/node': devDependencies['@types/node'],
  '@motiadev/stream-client-browser': devDependencies['@motiadev/stream-client-browser'].replace(/^\^/, '')
})
t.teardown(consumer.remove)
const { dir } = consumer
/** The environment of the app's processes: the test runner's own loader options are not the app's. */
const appEnv = { ...process.env, NODE_OPTIONS: '' }

/** Every installed copy of package `name`, at any depth of node_modules: its version. */
function installedVersions (name: string, nodeModules = join(dir, 'node_modules')): string[] {
  if (!existsSync(nodeModules)) return []
  const found: string[] = []
  const manifest = join(nodeModules, name, 'package.json')
  if (existsSync(manifest)) found.push(JSON.parse(readFileSync(manifest, 'utf8')).version)
  for (const entry of readdirSync(nodeModules)) {
    const packages = entry.startsWith('@') ? readdirSync(join(nodeModules, entry)).map(sub => join(entry, sub)) : [entry]
    for (const pkg of packages) found.push(...installedVersions(name, join(nodeModules, pkg, 'node_modules')))
  }
  return found
}

const ESM_APP = `import Fastify from 'fastify'
import streams, { type FastifyStreams } from 'fastify-streams'

const app = Fastify()
await app.register(streams, { adapter: { class: 'modules::streams::adapters::KvStore', config: { store_method: 'in_memory' } } })
const api: FastifyStreams = app.streams
const count: number = api.connectionCount
await app.streams.set('todo', 'inbox', 't1', { title: 'buy milk' })
// @ts-expect-error there is no such trigger type
app.streams.registerTrigger({ trigger_type: 'streams:jion', function_path: 'onJoin' })
// @ts-expect-error there is no such store method
await Fastify().register(streams, { adapter: { class: 'kv', config: { store_method: 'file_base' } } })
export { count }
`

const CJS_APP = `const Fastify = require('fastify')
const { fastifyStreams } = require('fastify-streams')

async function main () {
  const app = Fastify()
  await app.register(fastifyStreams)
  const result = await app.streams.set('todo', 'inbox', 't1', { title: 'buy milk' })
  process.stdout.write(JSON.stringify(result))
  await app.close()
}
main()
`

t.test('the app gets one Fastify, its own older 5.x, and the plugin uses it', async t => {
  t.same(installedVersions('fastify'), [OLDER_FASTIFY], 'one copy of fastify in node_modules, the version the app asked for')
})

t.test('ESM and CommonJS code and every README block type-check against the packed package', async t => {
  const blocks = readmeBlocks()
  t.ok(blocks.length >= 3, 'the README has code blocks to check')
  for (const block of blocks) writeFileSync(join(dir, block.file), block.code)
  writeFileSync(join(dir, 'esm-app.ts'), ESM_APP)
  writeFileSync(join(dir, 'cjs-app.cjs'), CJS_APP)
  const tsconfig = {
    compilerOptions: { ...STRICT_TSCONFIG.compilerOptions, allowJs: true, checkJs: true, lib: ['ES2022', 'DOM'] },
    include: ['*.ts', '*.mjs', '*.cjs']
  }
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify(tsconfig, null, 2))
  const { ok, output } = await typecheck(dir)
  const legend = blocks.map(block => `${block.file} = README.md:${block.line} (${block.section})`).join('\n')
  t.ok(ok, 'tsc --noEmit passes', { output, legend })
})

t.test('require(\'fastify-streams\') works in a CommonJS app', async t => {
  if (!existsSync(join(dir, 'cjs-app.cjs'))) writeFileSync(join(dir, 'cjs-app.cjs'), CJS_APP)
  const { code, stdout, stderr } = await runNode(dir, ['cjs-app.cjs'])
  t.equal(code, 0, 'exits 0', { stderr })
  t.same(JSON.parse(stdout), { old_value: null, new_value: { title: 'buy milk', id: 't1' } }, 'the plugin registered and stored an item')
  t.notMatch(stderr, /Warning/, 'no warning printed')
})

t.test('the README\'s main sample runs, and serves the stock client', async t => {
  const sample = mainSample(readmeBlocks())
  const js = ts.transpileModule(sample.code, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText
  writeFileSync(join(dir, 'readme-sample.mjs'), js)
  const server = spawn(process.execPath, ['readme-sample.mjs'], { cwd: dir, env: { ...appEnv, PORT: '0' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let logs = ''
  server.stdout.on('data', chunk => { logs += String(chunk) })
  server.stderr.on('data', chunk => { logs += String(chunk) })
  const exited = new Promise<number | null>(resolve => server.once('exit', code => resolve(code)))
  t.teardown(async () => {
    if (server.exitCode === null) server.kill('SIGKILL')
    await exited
  })
  const listening = /Server listening at http:\/\/127\.0\.0\.1:(\d+)/
  await until(() => listening.test(logs) || server.exitCode !== null, 'the sample to listen', 20000)
  t.equal(server.exitCode, null, 'the sample is up', { logs })
  const port = listening.exec(logs)?.[1]
  const http = `http://127.0.0.1:${port}`
  const ws = `ws://127.0.0.1:${port}/`

  const ana = new Stream(ws, { protocols: ['Authorization', 'ana-token'] })
  t.teardown(() => ana.close())
  const list = ana.subscribeGroup<{ id: string, title: string, done: boolean }>('todo', 'ana')
  await until(() => (list as unknown as { lastTimestamp: number }).lastTimestamp > 0, 'ana\'s sync')
  const put = await fetch(`${http}/todos/t1`, { method: 'PUT', headers: { authorization: 'Bearer ana-token', 'content-type': 'application/json' }, body: JSON.stringify({ title: 'buy milk' }) })
  t.equal(put.status, 200, 'ana writes through HTTP')
  await until(() => list.getState().some(todo => todo.id === 't1'), 'the item over ana\'s socket')
  t.same(list.getState(), [{ id: 't1', title: 'buy milk', done: false }], 'ana\'s subscriber shows the item')
  const listed = await fetch(`${http}/todos`, { headers: { authorization: 'Bearer ana-token' } })
  t.same(await listed.json(), list.getState(), 'GET /todos returns what the subscriber shows')

  const bob = await RawClient.open(ws, ['Authorization', 'bob-token'])
  t.teardown(() => bob.close())
  bob.join('todo', 'ana')
  await until(() => bob.frames.length > 0, 'an answer to bob\'s join')
  t.same(bob.frames[0].event, { type: 'unauthorized' }, 'bob may not read ana\'s list')

  const refusal = await RawClient.open(ws).then(client => { client.socket.terminate(); return null }, (err: { statusCode?: number }) => err.statusCode)
  t.equal(refusal, 401, 'a socket without a token is refused with 401')
  t.equal((await fetch(`${http}/todos`)).status, 401, 'HTTP without a token is refused')
})

async function runNode (cwd: string, args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const child = spawn(process.execPath, args, { cwd, env: appEnv, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', chunk => { stdout += String(chunk) })
  child.stderr.on('data', chunk => { stderr += String(chunk) })
  const code = await new Promise<number | null>(resolve => child.once('exit', resolve))
  return { code, stdout, stderr }
}
