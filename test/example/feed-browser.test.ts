// The example's feed page in a real headless Chromium: the todo list read through its group feed with the
// official Durable Streams client (bundled by esbuild) and MaterializedState. The test takes the page offline
// and drops its connections; changes made meanwhile show once it is back, from its offset, without a reload.
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import type { Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { build } from 'esbuild'
import Fastify, { type FastifyPluginAsync } from 'fastify'
import { chromium, type BrowserContext } from 'playwright-core'
import t from 'tap'
import streams from '../../lib/index.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'

// A missing browser is a failure, never a skip: .ci/run installs it.
if (!existsSync(CHROMIUM)) t.fail(`${CHROMIUM} is missing (apt-get install -y chromium)`)
else await main()

async function main (): Promise<void> {
  // The page's bundle, exactly as `npm run build:example` makes it.
  await build({
    entryPoints: [join(root, 'example/src/feed.mjs')],
    bundle: true,
    format: 'iife',
    platform: 'browser',
    target: 'es2020',
    outfile: join(root, 'example/public/feed.js'),
    logLevel: 'error'
  })

  const app = Fastify({ forceCloseConnections: true })
  await app.register(streams, { auth_function: 'example.auth', feeds: true })
  const example = await import(pathToFileURL(join(root, 'example/app.js')).href) as { default: FastifyPluginAsync }
  await app.register(example.default)
  // Every TCP connection the page opens, so the test can cut them.
  const connections = new Set<Socket>()
  app.server.on('connection', (socket: Socket) => {
    connections.add(socket)
    socket.once('close', () => connections.delete(socket))
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const address = app.server.address()
  const base = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`

  const profile = mkdtempSync(join(tmpdir(), 'streams-chromium-'))
  const context: BrowserContext = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
  context.setDefaultTimeout(15_000)
  t.teardown(async () => {
    await context.close()
    rmSync(profile, { recursive: true, force: true })
  })

  const api = async (method: string, path: string, body?: unknown): Promise<Response> => await fetch(`${base}${path}`, {
    method,
    headers: { authorization: 'Bearer ana-token', ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body)
  })

  await app.streams.set('todo', 'ana', 'seed-1', { id: 'seed-1', title: 'Water the plants', done: true, createdAt: '2026-01-01T10:00:00.000Z' })
  await app.streams.set('todo', 'ana', 'seed-2', { id: 'seed-2', title: 'Write the README', done: false, createdAt: '2026-01-01T11:00:00.000Z' })

  const pageErrors: string[] = []
  const page = await context.newPage()
  page.on('pageerror', err => pageErrors.push(err.message))
  await page.goto(`${base}/app/feed.html?token=ana-token`)
  const titles = async (): Promise<string[]> => await page.locator('#list li .title').allTextContents()
  const item = (title: string) => page.locator('#list li', { hasText: title })

  t.test('the list shows from the snapshot, then live changes', async t => {
    await page.locator('#app[data-state="live"]').waitFor()
    await item('Write the README').waitFor()
    t.same(await titles(), ['Water the plants', 'Write the README'])
    await api('POST', '/api/todos/ana', { title: 'Buy oat milk' })
    await item('Buy oat milk').waitFor()
    await api('PATCH', '/api/todos/ana/seed-2', { done: true })
    await page.locator('#list li.done', { hasText: 'Write the README' }).waitFor()
  })

  t.test('offline: changes made meanwhile show once it is back, resumed from its offset, without a reload', async t => {
    await page.evaluate(() => { (window as unknown as { loadedOnce: boolean }).loadedOnce = true })
    const before = await page.locator('#offset').textContent()
    await context.setOffline(true)
    for (const socket of connections) socket.destroy()
    await page.locator('#app[data-state="offline"]').waitFor()

    await api('POST', '/api/todos/ana', { title: 'Added while offline' })
    await api('DELETE', '/api/todos/ana/seed-1')
    await app.streams.send('todo', 'ana', { type: 'nudge', data: null })
    t.notOk(await item('Added while offline').count(), 'not shown while offline')

    await context.setOffline(false)
    await page.locator('#app[data-state="live"]').waitFor()
    await item('Added while offline').waitFor()
    await item('Water the plants').waitFor({ state: 'detached' })
    t.same(await titles(), ['Write the README', 'Buy oat milk', 'Added while offline'])
    t.equal(await page.evaluate(() => (window as unknown as { loadedOnce?: boolean }).loadedOnce), true, 'the page was not reloaded')
    t.ok((await page.locator('#offset').textContent())! > before!, 'the offset moved on')

    await api('POST', '/api/todos/ana', { title: 'Book the train' })
    await item('Book the train').waitFor()
    t.same(pageErrors, [], 'no page errors')
  })
}
