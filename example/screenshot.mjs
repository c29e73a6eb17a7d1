// Refreshes docs/screenshot.png (the README's picture): the example page, live in headless Chromium, showing a
// list changed while it was open (an item ticked, one added).
//   npm run screenshot        (builds dist/ first; this script loads the plugin from there)
import { join } from 'node:path'
import streams from '../dist/index.js'
import { buildBundles, EXAMPLE_DIR, openChromium, startExample } from './harness.mjs'

const OUTPUT = join(EXAMPLE_DIR, '..', 'docs', 'screenshot.png')
const ITEMS = ['Write the README', 'Buy oat milk', 'Call the plumber']

await buildBundles()
const { app, base } = await startExample(streams)
const chromium = await openChromium()
try {
  for (const [index, title] of ITEMS.entries()) {
    const id = `todo-${index + 1}`
    await app.streams.set('todo', 'ana', id, { id, title, done: false, createdAt: `2026-01-01T10:0${index}:00.000Z` })
  }
  const page = await chromium.context.newPage()
  await page.goto(`${base}/app/?token=ana-token`)
  await page.locator('#app[data-state="live"]').waitFor()
  await page.locator('#status[data-state="open"]').waitFor()
  // Two changes after the page synced, so the picture shows live updates, not just the first render.
  await app.streams.update('todo', 'ana', 'todo-2', [{ type: 'set', path: 'done', value: true }])
  await app.streams.set('todo', 'ana', 'todo-4', { id: 'todo-4', title: 'Book the train', done: false, createdAt: '2026-01-01T10:03:00.000Z' })
  await page.locator('#list li.done', { hasText: 'Buy oat milk' }).waitFor()
  await page.locator('#list li', { hasText: 'Book the train' }).waitFor()
  await page.screenshot({ path: OUTPUT })
  console.log(`wrote ${OUTPUT}`)
} finally {
  await chromium.close()
  await app.close()
}
