// The example page in a real headless Chromium: the stock browser client, bundled by esbuild, against the
// plugin and example/app.js on a real port. Also writes docs/screenshot.png (linked from the README).
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { build } from 'esbuild'
import Fastify, { type FastifyPluginAsync } from 'fastify'
import { chromium, type BrowserContext, type Page } from 'playwright-core'
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
    entryPoints: [join(root, 'example/src/app.mjs')],
    bundle: true,
    format: 'iife',
    platform: 'browser',
    target: 'es2020',
    outfile: join(root, 'example/public/bundle.js'),
    logLevel: 'error'
  })

  const app = Fastify({ forceCloseConnections: true })
  await app.register(streams, { auth_function: 'example.auth' })
  const example = await import(pathToFileURL(join(root, 'example/app.js')).href) as { default: FastifyPluginAsync }
  await app.register(example.default)
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const address = app.server.address()
  const base = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`

  const profile = mkdtempSync(join(tmpdir(), 'streams-chromium-'))
  const context: BrowserContext = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 760, height: 470 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
  context.setDefaultTimeout(10_000)
  t.teardown(async () => {
    await context.close()
    rmSync(profile, { recursive: true, force: true })
  })

  const pageErrors: string[] = []
  async function open (query: string): Promise<Page> {
    const page = await context.newPage()
    page.on('pageerror', err => pageErrors.push(err.message))
    await page.goto(`${base}/app/${query}`)
    return page
  }

  async function api (method: string, path: string, token: string, body?: unknown): Promise<Response> {
    return await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body)
    })
  }

  const titles = async (page: Page): Promise<string[]> => await page.locator('#list li .title').allTextContents()
  const item = (page: Page, title: string) => page.locator('#list li', { hasText: title })

  // Ana's list before the page opens.
  await app.streams.set('todo', 'ana', 'seed-1', { id: 'seed-1', title: 'Water the plants', done: true, createdAt: '2026-01-01T10:00:00.000Z' })
  await app.streams.set('todo', 'ana', 'seed-2', { id: 'seed-2', title: 'Write the README', done: false, createdAt: '2026-01-01T11:00:00.000Z' })

  const ana = await open('?token=ana-token')

  t.test('the initial list shows', async t => {
    await ana.locator('#app[data-state="live"]').waitFor()
    await ana.locator('#status[data-state="open"]').waitFor()
    t.same(await titles(ana), ['Water the plants', 'Write the README'])
    t.equal(await ana.locator('#title').textContent(), "ana's todos")
    t.ok(await item(ana, 'Water the plants').evaluate(el => el.classList.contains('done')), 'done items are marked')
  })

  t.test('an item added over HTTP appears without reload', async t => {
    const res = await api('POST', '/api/todos/ana', 'ana-token', { title: 'Buy oat milk' })
    t.equal(res.status, 201)
    await item(ana, 'Buy oat milk').waitFor()
    t.same(await titles(ana), ['Water the plants', 'Write the README', 'Buy oat milk'])
  })

  t.test('an update over HTTP shows, and so does one made from the page', async t => {
    await api('PATCH', '/api/todos/ana/seed-2', 'ana-token', { title: 'Write the README (draft)' })
    await item(ana, 'Write the README (draft)').waitFor()
    await ana.locator('#new-title').fill('Call the plumber')
    await ana.locator('#add button').click()
    await item(ana, 'Call the plumber').waitFor()
    const list = await (await api('GET', '/api/todos/ana', 'ana-token')).json() as Array<{ title: string }>
    t.ok(list.some(entry => entry.title === 'Call the plumber'), 'the page wrote through the HTTP route')
  })

  t.test('a deleted item disappears', async t => {
    const res = await api('DELETE', '/api/todos/ana/seed-1', 'ana-token')
    t.equal(res.status, 204)
    await item(ana, 'Water the plants').waitFor({ state: 'detached' })
    t.notOk((await titles(ana)).includes('Water the plants'))
  })

  t.test('after the server drops every socket the page reconnects and shows what changed meanwhile', async t => {
    const sockets = (): number => app.websocketServer.clients.size
    t.equal(sockets(), 1, 'one socket before')
    app.streams.dropConnections()
    await ana.locator('#status[data-state="closed"]').waitFor()
    // While the page is away (the stock client waits 2 s before reconnecting):
    await api('POST', '/api/todos/ana', 'ana-token', { title: 'Added while offline' })
    const list = await (await api('GET', '/api/todos/ana', 'ana-token')).json() as Array<{ id: string, title: string }>
    const plumber = list.find(entry => entry.title === 'Call the plumber')
    t.ok(plumber)
    await api('DELETE', `/api/todos/ana/${plumber?.id}`, 'ana-token')
    t.notOk(await item(ana, 'Added while offline').count(), 'not shown before the reconnect')

    await ana.locator('#status[data-state="open"]').waitFor({ timeout: 10_000 })
    await item(ana, 'Added while offline').waitFor()
    await item(ana, 'Call the plumber').waitFor({ state: 'detached' })
    t.same(await titles(ana), ['Write the README (draft)', 'Buy oat milk', 'Added while offline'])
    t.equal(sockets(), 1, 'one socket again')

    // Still live after the reconnect.
    await api('POST', '/api/todos/ana', 'ana-token', { title: 'Book the train' })
    await item(ana, 'Book the train').waitFor()
    // Ticked from the page: PATCH through the route, back over the socket.
    await item(ana, 'Buy oat milk').locator('input[type="checkbox"]').check()
    await ana.locator('#list li.done', { hasText: 'Buy oat milk' }).waitFor()
    t.match(await app.streams.get('todo', 'ana', (list.find(entry => entry.title === 'Buy oat milk') ?? { id: '' }).id), { done: true })
    mkdirSync(join(root, 'docs'), { recursive: true })
    await ana.screenshot({ path: join(root, 'docs/screenshot.png') })
  })

  t.test('a user without access sees the list refused', async t => {
    const bob = await open('?token=bob-token&user=ana')
    await bob.locator('#app[data-state="refused"]').waitFor()
    t.match(await bob.locator('#message').textContent(), /Not allowed: the server refused to let bob subscribe to ana's list/)
    t.equal(await bob.locator('#list li').count(), 0, 'no items leak')
    t.ok(await bob.locator('#add').isHidden(), 'no form')
    t.equal((await api('GET', '/api/todos/ana', 'bob-token')).status, 403, 'HTTP refuses too')

    const anonymous = await open('?user=ana')
    await anonymous.locator('#app[data-state="refused"]').waitFor()
    t.match(await anonymous.locator('#message').textContent(), /an anonymous visitor/)

    // Bob's own list works, and Ana's writes do not reach it.
    const own = await open('?token=bob-token')
    await own.locator('#app[data-state="live"]').waitFor()
    t.ok(await own.locator('#empty').isVisible(), 'empty list')
    await bob.close()
    await anonymous.close()
    await own.close()
  })

  t.test('no page errors', async t => {
    t.same(pageErrors, [])
  })
}
