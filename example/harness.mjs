// What the example's scripts and its browser tests share: how the pages' bundles are built, how the example
// app is started on a free port, and how headless Chromium is opened.
//   node example/harness.mjs        builds example/public/bundle.js, react.js and feed.js (npm run build:example)
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import Fastify from 'fastify'
import { chromium } from 'playwright-core'
import todoExample from './app.js'

export const EXAMPLE_DIR = dirname(fileURLToPath(import.meta.url))
export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
// Debian's Chromium in a container: no sandbox, nothing running in the background, no first-run work.
export const CHROMIUM_ARGS = Object.freeze([
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'
])

/**
 * The pages' bundles, built into example/public as `<name>.js`: bundle.js (the stock browser client), react.js (the
 * React client), feed.js (the group feed).
 */
export const BUNDLE_ENTRIES = Object.freeze({ bundle: 'src/app.mjs', react: 'src/react.jsx', feed: 'src/feed.mjs' })

export async function buildBundles () {
  await build({
    entryPoints: Object.fromEntries(Object.entries(BUNDLE_ENTRIES).map(([name, source]) => [name, join(EXAMPLE_DIR, source)])),
    outdir: join(EXAMPLE_DIR, 'public'),
    bundle: true,
    format: 'iife',
    platform: 'browser',
    target: 'es2020',
    jsx: 'automatic',
    // React picks its build from process.env.NODE_ENV, which a browser does not have.
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'error'
  })
}

/**
 * The example as the standalone server runs it (streams plugin, then example/app.js) on 127.0.0.1 and a free
 * port. `streams` is the plugin: the tests pass lib/, the scripts dist/.
 */
export async function startExample (streams, options = {}) {
  // A browser keeps idle connections open: close them with the app.
  const app = Fastify({ forceCloseConnections: true })
  await app.register(streams, { auth_function: 'example.auth', ...options })
  await app.register(todoExample)
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, base: `http://127.0.0.1:${app.server.address().port}` }
}

/** Headless Chromium with a fresh profile; `close()` ends it and removes the profile. */
export async function openChromium (viewport = { width: 760, height: 470 }) {
  const profile = await mkdtemp(join(tmpdir(), 'streams-chromium-'))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM_PATH, headless: true, viewport, args: [...CHROMIUM_ARGS]
  })
  context.setDefaultTimeout(10_000)
  return {
    context,
    async close () {
      await context.close()
      await rm(profile, { recursive: true, force: true })
    }
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await buildBundles()
