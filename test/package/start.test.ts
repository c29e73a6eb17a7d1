// `npm start`: its build step skips what is already built, and the command prints the example page's URL.
import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { until } from '../helpers/app.js'
import { root, run } from '../helpers/cli.js'

const exec = promisify(execFile)
const prestart = (): Promise<{ stdout: string }> => exec(process.execPath, [join(root, 'scripts', 'prestart.mjs')], { cwd: root })

t.test('the build step of npm start leaves an up-to-date dist/ and page bundle alone', async t => {
  await prestart() // builds whatever a fresh checkout lacks
  const built = statSync(join(root, 'dist', 'index.js')).mtimeMs
  const { stdout } = await prestart()
  t.match(stdout, /dist\/ is up to date/, 'dist/ is not rebuilt')
  t.match(stdout, /the example bundles are up to date/, 'the page bundles are not rebuilt')
  t.equal(statSync(join(root, 'dist', 'index.js')).mtimeMs, built, 'dist/index.js is untouched')
})

t.test('the command prints the URL of the page an app module serves', async t => {
  const cwd = mkdtempSync(join(tmpdir(), 'streams-page-'))
  t.teardown(() => rmSync(cwd, { recursive: true, force: true }))
  const server = run(['--config', join(root, 'example', 'config.yaml'), '--port', '0', '--host', '127.0.0.1'], { LOG_LEVEL: 'warn' }, cwd)
  t.teardown(() => { server.child.kill('SIGKILL') })
  const page = /open (http:\/\/127\.0\.0\.1:\d+\/app\/\?token=ana-token)\n/
  await until(() => page.test(server.stdout()) || server.child.exitCode !== null, 'the page URL', 15000)
  const url = page.exec(server.stdout())?.[1]
  t.ok(url, 'the URL is printed', { stdout: server.stdout(), stderr: server.stderr() })
  const response = await fetch(url ?? '')
  t.equal(response.status, 200, 'the page answers there')
  t.match(response.headers.get('content-type'), /text\/html/)
  server.child.kill('SIGTERM')
  t.equal(await server.exit, 0)
})
