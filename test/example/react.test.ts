// The React client the README names, `@motiadev/stream-client-react`, in a real headless Chromium: the example's
// React page (example/src/react.jsx, bundled by esbuild) renders a group through `useStreamGroup` inside
// `MotiaStreamProvider`, against the plugin and example/app.js on a real port.
import { existsSync } from 'node:fs'
import type { Page } from 'playwright-core'
import t from 'tap'
import streams from '../../lib/index.js'
import { buildBundles, CHROMIUM_PATH, openChromium, startExample } from '../../example/harness.mjs'

// A missing browser is a failure, never a skip: .ci/run installs it.
if (!existsSync(CHROMIUM_PATH)) t.fail(`${CHROMIUM_PATH} is missing (apt-get install -y chromium)`)
else await main()

async function main (): Promise<void> {
  await buildBundles()
  const { app, base } = await startExample(streams)
  t.teardown(() => app.close())
  const chromium = await openChromium()
  t.teardown(chromium.close)

  const pageErrors: string[] = []
  async function open (query: string): Promise<Page> {
    const page = await chromium.context.newPage()
    page.on('pageerror', err => pageErrors.push(err.message))
    await page.goto(`${base}/app/react.html${query}`)
    return page
  }
  const titles = async (page: Page): Promise<string[]> => await page.locator('#list li .title').allTextContents()
  const item = (page: Page, title: string) => page.locator('#list li', { hasText: title })
  const todo = (id: string, title: string, minute: number, done = false) =>
    ({ id, title, done, createdAt: `2026-01-01T10:${String(minute).padStart(2, '0')}:00.000Z` })

  await app.streams.set('todo', 'ana', 'r1', todo('r1', 'Water the plants', 1, true))
  await app.streams.set('todo', 'ana', 'r2', todo('r2', 'Write the README', 2))
  await app.streams.set('todo', 'bob', 'b1', todo('b1', "Bob's own item", 3))

  const ana = await open('?token=ana-token')

  t.test('the initial list renders through useStreamGroup', async t => {
    await ana.locator('#app[data-state="live"]').waitFor()
    t.same(await titles(ana), ['Water the plants', 'Write the README'])
    t.equal(await ana.locator('#title').textContent(), "ana's todos")
    t.ok(await item(ana, 'Water the plants').evaluate(el => el.classList.contains('done')), 'done items are marked')
    t.equal(await ana.locator('#empty').count(), 0, 'no empty-list note')
  })

  t.test('a create shows live', async t => {
    await app.streams.set('todo', 'ana', 'r3', todo('r3', 'Buy oat milk', 3))
    await item(ana, 'Buy oat milk').waitFor()
    t.same(await titles(ana), ['Water the plants', 'Write the README', 'Buy oat milk'])
  })

  t.test('an update shows live: an atomic update, and a PATCH through the example route', async t => {
    await app.streams.update('todo', 'ana', 'r2', [{ type: 'set', path: 'title', value: 'Write the README (draft)' }])
    await item(ana, 'Write the README (draft)').waitFor()
    const res = await fetch(`${base}/api/todos/ana/r3`, {
      method: 'PATCH',
      headers: { authorization: 'Bearer ana-token', 'content-type': 'application/json' },
      body: JSON.stringify({ done: true })
    })
    t.equal(res.status, 200)
    await ana.locator('#list li.done', { hasText: 'Buy oat milk' }).waitFor()
    t.same(await titles(ana), ['Water the plants', 'Write the README (draft)', 'Buy oat milk'], 'in place')
  })

  t.test('a delete shows live', async t => {
    await app.streams.delete('todo', 'ana', 'r1')
    await item(ana, 'Water the plants').waitFor({ state: 'detached' })
    t.same(await titles(ana), ['Write the README (draft)', 'Buy oat milk'])
    // A write to bob's list (another group), then a marker in ana's: once the marker shows, bob's never will.
    await app.streams.set('todo', 'bob', 'b2', todo('b2', "Bob's second item", 4))
    await app.streams.set('todo', 'ana', 'r4', todo('r4', 'Marker', 5))
    await item(ana, 'Marker').waitFor()
    t.same(await titles(ana), ['Write the README (draft)', 'Buy oat milk', 'Marker'], "another group's write does not show")
  })

  t.test('another user\'s list is refused: the hook stays empty', async t => {
    const bob = await chromium.context.newPage()
    bob.on('pageerror', err => pageErrors.push(err.message))
    // Marker: the server's refusal on the page's socket (the stock client ignores it; nothing else follows).
    const refused = new Promise<void>(resolve => bob.on('websocket', socket => socket.on('framereceived', ({ payload }) => {
      if (String(payload).includes('"type":"unauthorized"')) resolve()
    })))
    await bob.goto(`${base}/app/react.html?token=bob-token&user=ana`)
    await refused
    t.equal(await bob.locator('#app').getAttribute('data-state'), 'loading', 'no sync for a refused join')
    t.equal(await bob.locator('#list li').count(), 0, 'no items leak')
    await bob.close()

    const own = await open('?token=bob-token')
    await own.locator('#app[data-state="live"]').waitFor()
    t.same(await titles(own), ["Bob's own item", "Bob's second item"], 'bob sees his own list')
    await own.close()
  })

  t.test('no page errors', async t => {
    t.same(pageErrors, [])
  })
}
