// The example page in a real headless Chromium: the stock browser client, bundled by esbuild, against the
// plugin and example/app.js on a real port. Its screenshot goes to a temp file (npm run screenshot refreshes
// docs/screenshot.png).
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Page } from 'playwright-core'
import t from 'tap'
import streams from '../../lib/index.js'
import { buildBundles, CHROMIUM_PATH, openChromium, startExample } from '../../example/harness.mjs'

// A missing browser is a failure, never a skip: .ci/run installs it.
if (!existsSync(CHROMIUM_PATH)) t.fail(`${CHROMIUM_PATH} is missing (apt-get install -y chromium)`)
else await main()

async function main (): Promise<void> {
  await buildBundles() // exactly as `npm run build:example` makes them
  const { app, base } = await startExample(streams)
  t.teardown(() => app.close())
  const chromium = await openChromium()
  const context = chromium.context
  t.teardown(chromium.close)

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
    const shots = mkdtempSync(join(tmpdir(), 'streams-screenshot-'))
    t.teardown(() => rmSync(shots, { recursive: true, force: true }))
    const shot = join(shots, 'screenshot.png')
    await ana.screenshot({ path: shot })
    t.same([...readFileSync(shot).subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'a PNG screenshot, outside the working tree')
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
