#!/usr/bin/env node
// fastify-streams: a standalone streams server from an iii-style YAML config.
//   fastify-streams --config config.yaml [--module app.js]... [--port N] [--host H]
// Runs the compiled plugin in ../dist (npm run build). Errors print one line and exit 1 (2 for bad usage).
import { mkdirSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'

const USAGE = `Usage: fastify-streams [--config <file.yaml>] [--module <file.js>]... [--port <n>] [--host <host>]

Serves real-time streams over WebSocket (Motia streams wire protocol) from an iii-style config:

  modules:
    - class: modules::streams::StreamModule
      config:
        port: \${STREAMS_PORT:31112}
        host: 0.0.0.0
        auth_function: my.auth
        adapter: { class: modules::streams::adapters::KvStore, config: { store_method: in_memory } }
  app_modules: [./app.js]      # Fastify plugins registered after the streams plugin (relative to the file)

Options:
  -c, --config <file>   the YAML config (without one: in memory, port \${STREAMS_PORT:31112}, host 0.0.0.0)
  -m, --module <file>   also register this ES module (default export = a Fastify plugin); repeatable
  -p, --port <n>        listen on this port (overrides the config; 0 = any free port)
      --host <host>     listen on this host (overrides the config)
  -h, --help            show this help

Environment: LOG_LEVEL (default info). SIGINT/SIGTERM close the sockets, flush storage and exit 0.`

function die (message, code = 1) {
  process.stderr.write(`fastify-streams: ${message.split('\n')[0]}\n`)
  process.exit(code)
}

let args
try {
  args = parseArgs({
    options: {
      config: { type: 'string', short: 'c' },
      module: { type: 'string', short: 'm', multiple: true },
      port: { type: 'string', short: 'p' },
      host: { type: 'string' },
      help: { type: 'boolean', short: 'h' }
    },
    strict: true,
    allowPositionals: false
  }).values
} catch (err) {
  die(`${err.message} (see --help)`, 2)
}

if (args.help) {
  process.stdout.write(`${USAGE}\n`)
  process.exit(0)
}

let port
if (args.port !== undefined) {
  port = Number(args.port)
  if (!/^\d+$/.test(args.port) || port > 65535) die(`--port: expected an integer from 0 to 65535, got "${args.port}"`, 2)
}
if (args.host !== undefined && args.host === '') die('--host: expected a host name or address', 2)

let lib
try {
  const [config, plugin] = await Promise.all([import('../dist/config.js'), import('../dist/index.js')])
  lib = { ...config, plugin: plugin.default }
} catch (err) {
  die(err.code === 'ERR_MODULE_NOT_FOUND'
    ? 'the compiled plugin is missing: run `npm run build` first (dist/ not found)'
    : `cannot load the plugin from dist/: ${err.message}`)
}

let config
let modules
try {
  config = lib.loadConfig(args.config ?? null)
  modules = [...config.modules, ...(args.module ?? []).map(file => lib.cliModule(file))]
} catch (err) {
  die(err.code === 'STREAMS_ERR_CONFIG' ? err.message : `${err.code ?? 'error'}: ${err.message}`)
}

const { default: Fastify } = await import('fastify')
const app = Fastify({
  logger: { level: process.env.LOG_LEVEL ?? 'info' },
  forceCloseConnections: true
})

// Anything that escapes (a backend failing later, say) ends the process with one line, not a stack.
function fatal (err) {
  die(`fatal: ${err?.code ? `${err.code}: ` : ''}${err?.message ?? String(err)}`)
}
process.on('uncaughtException', fatal)
process.on('unhandledRejection', fatal)

const pages = []

async function start () {
  const adapter = config.normalized.adapter
  // A fresh clone has no data/ directory: create the SQLite file's directory before the store opens it.
  if (adapter.kind === 'kv' && adapter.config.storeMethod === 'file_based') mkdirSync(dirname(resolve(adapter.config.filePath)), { recursive: true })
  await app.register(lib.plugin, config.options)
  for (const mod of modules) {
    const plugin = await lib.importAppModule(mod)
    await app.register(plugin, mod.options)
    // A module may name a page it serves (`export const page = '/app/'`): its URL is printed once listening.
    const { page } = await import(pathToFileURL(mod.path).href)
    if (typeof page === 'string' && page.startsWith('/')) pages.push(page)
  }
  await app.ready()
  await app.listen({ port: port ?? config.port, host: args.host ?? config.host })
}

function where (address) {
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address
  const shown = host === '0.0.0.0' || host === '[::]' ? 'localhost' : host
  return `${shown}:${address.port}`
}

try {
  await start()
} catch (err) {
  await app.close().catch(() => {})
  const source = err.code === 'STREAMS_ERR_CONFIG' ? '' : config.file ? `${config.file}: ` : ''
  die(err.code === 'STREAMS_ERR_CONFIG' ? err.message : `${source}${err.code ? `${err.code}: ` : ''}${err.message}`)
}

for (const address of app.server.address() ? [app.server.address()] : []) {
  const url = `ws://${where(address)}${config.normalized.path}`
  process.stdout.write(`fastify-streams listening on ${url}${config.file ? ` (config ${config.file})` : ''}\n`)
  for (const page of pages) process.stdout.write(`open http://${where(address)}${page}\n`)
}
if (config.ignored.length > 0) app.log.info({ ignored: config.ignored }, 'fastify-streams: other modules in the config are not run by this server')

let closing = false
async function shutdown (signal) {
  if (closing) {
    process.stderr.write(`fastify-streams: ${signal} again, exiting without waiting\n`)
    process.exit(1)
  }
  closing = true
  app.log.info({ signal }, 'fastify-streams: closing')
  const timer = setTimeout(() => die('close timed out after 10 s'), 10_000)
  timer.unref()
  try {
    await app.close()
  } catch (err) {
    die(`error while closing: ${err.code ? `${err.code}: ` : ''}${err.message}`)
  }
  process.exit(0)
}
process.on('SIGINT', () => { shutdown('SIGINT') })
process.on('SIGTERM', () => { shutdown('SIGTERM') })
