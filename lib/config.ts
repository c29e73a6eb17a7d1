// The iii-style YAML config file → plugin options, listen address and the user's own modules.
// Used by the standalone server (bin/fastify-streams.js); every problem becomes a ConfigError naming the file,
// the key and what was expected.
//
//   modules:                                   # (or `workers:`) other entries (other iii modules) are ignored
//     - class: modules::streams::StreamModule  # or modules::stream::StreamModule, or `name: iii-stream`
//       config:
//         port: ${STREAMS_PORT:31112}          # a plain scalar that is one placeholder expanding to an integer is a number
//         host: 0.0.0.0
//         auth_function: example.auth
//         adapter:
//           class: modules::streams::adapters::KvStore      # or { name: kv | redis, config }
//           config: { store_method: file_based, file_path: ./data/streams_store.db }
//           # or class: ./adapters/mine.js (relative to this file) or a package name: a module exporting a factory
//         # plus any plugin option: path, auth_failure, join_failure, inject_id, max_payload, …
//   app_modules:                               # ES modules whose default export is a Fastify plugin,
//     - ./app.js                               # registered after the streams plugin; relative to this file
//     - { path: ./other.js, options: { … } }
import { existsSync, readFileSync, statSync } from 'node:fs'
import { dirname, isAbsolute, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { isAlias, isMap, isPair, isScalar, isSeq, parseDocument, type Node as YamlNode, type Scalar } from 'yaml'
import { resolveAdapterModule } from './adapters/build.js'
import { KV_ADAPTER_CLASSES } from './adapters/kv-config.js'
import { REDIS_ADAPTER_CLASSES } from './adapters/redis-config.js'
import { OptionReader, isPlainObject, type Raw } from './checks.js'
import { ConfigError, InvalidOptionError } from './errors.js'
import { adapterModuleKind, normalizeOptions, type NormalizedOptions, type StreamsOptions } from './options.js'

/** Where the standalone command listens unless the config or `--port` / `--host` say otherwise. */
export const DEFAULT_PORT = 31112
export const DEFAULT_HOST = '0.0.0.0'

export const STREAM_MODULE_CLASSES = ['modules::streams::StreamModule', 'modules::stream::StreamModule']
export const STREAM_WORKER_NAMES = ['iii-stream']
const TOP_KEYS = ['modules', 'workers', 'app_modules']
const MODULE_KEYS = ['class', 'name', 'config']
const APP_MODULE_KEYS = ['path', 'options']

export interface AppModule {
  /** Absolute path of the ES module. */
  path: string
  /** Options passed to the module's plugin. */
  options: Record<string, unknown>
  /** Where it was named: `app_modules[0]` or `--module`. */
  key: string
}

export interface LoadedConfig {
  /** Absolute path of the config file, or null when no file was given (defaults only). */
  file: string | null
  /**
   * Plugin options as written (snake_case kept), without port/host, with a module path in `adapter.class` made
   * a `file:` URL (it was relative to the config file); already checked by normalizeOptions.
   */
  options: StreamsOptions
  /** The same options normalised. */
  normalized: NormalizedOptions
  port: number
  host: string
  modules: AppModule[]
  /** The classes/names of the other module entries, which this server does not run. */
  ignored: string[]
}

export interface LoadConfigOptions {
  /** Environment for `${VAR}` expansion; process.env by default. */
  env?: Record<string, string | undefined>
}

type Env = Record<string, string | undefined>

const PLACEHOLDER = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}/g
const WHOLE_PLACEHOLDER = /^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}$/

function fail (file: string, key: string, expected: string): never {
  throw new ConfigError(file, key || '(root)', expected)
}

/**
 * Expands `${VAR}` and `${VAR:default}` in one string. A variable that is unset (or empty) takes the default;
 * without a default it is an error naming the key.
 */
export function expandString (value: string, env: Env, file: string, key: string): string {
  return value.replace(PLACEHOLDER, (_match, name: string, fallback: string | undefined) => {
    const set = env[name]
    if (set !== undefined && set !== '') return set
    if (fallback !== undefined) return fallback
    return fail(file, key, `environment variable ${name} is not set and the placeholder has no default (write \${${name}:default})`)
  })
}

function keyText (node: unknown): string {
  if (isScalar(node)) return String(node.value)
  return String(node)
}

function join (parent: string, child: string | number): string {
  if (typeof child === 'number') return `${parent}[${child}]`
  return parent === '' ? child : `${parent}.${child}`
}

/** Walks the YAML tree and expands placeholders in string scalars, in place. */
function expandTree (node: unknown, env: Env, file: string, key: string, seen: Set<unknown>): void {
  if (node === null || node === undefined || seen.has(node)) return
  seen.add(node)
  if (isAlias(node)) return // the anchored node is expanded where it is defined
  if (isScalar(node)) {
    expandScalar(node, env, file, key)
    return
  }
  if (isMap(node)) {
    for (const pair of node.items) {
      if (!isPair(pair)) continue
      expandTree(pair.value, env, file, join(key, keyText(pair.key)), seen)
    }
    return
  }
  if (isSeq(node)) {
    node.items.forEach((item, index) => expandTree(item, env, file, join(key, index), seen))
  }
}

function expandScalar (node: Scalar, env: Env, file: string, key: string): void {
  if (typeof node.value !== 'string' || !node.value.includes('${')) return
  const original = node.value
  const expanded = expandString(original, env, file, key)
  // `port: ${STREAMS_PORT:31112}` means a number, as if 31112 had been written; a quoted scalar stays a string.
  if (node.type === 'PLAIN' && WHOLE_PLACEHOLDER.test(original) && /^-?\d+$/.test(expanded.trim())) {
    const number = Number(expanded.trim())
    if (Number.isSafeInteger(number)) {
      node.value = number
      return
    }
  }
  node.value = expanded
}

function checkKeys (file: string, raw: Raw, allowed: string[], where: string): void {
  for (const key of Object.keys(raw)) {
    if (!allowed.includes(key)) fail(file, join(where, key), `unknown key (expected one of ${allowed.join(', ')})`)
  }
}

/** Runs `read` (option checks); an InvalidOptionError becomes a ConfigError naming the key under `where`. */
function checked<T> (file: string, where: string, read: () => T): T {
  try {
    return read()
  } catch (err) {
    if (!(err instanceof InvalidOptionError)) throw err
    return fail(file, err.key === '' ? where : join(where, err.key), err.reason)
  }
}

/** The listen address, which only the standalone command uses (the plugin ignores both keys). */
function listenAddress (raw: Raw): { port: number, host: string } {
  const listen = new OptionReader(raw)
  return { port: listen.integer('port', DEFAULT_PORT, 0, 65535), host: listen.nonEmptyString('host', DEFAULT_HOST) }
}

/**
 * A module named in `adapter.class` is found from the config file's folder (the plugin alone would look from the
 * working directory): the class becomes the module's `file:` URL. A path or URL to a missing file is refused here.
 */
function locateAdapterModule (file: string, raw: Raw, where: string): void {
  const adapter = raw.adapter
  if (!isPlainObject(adapter) || typeof adapter.class !== 'string') return
  const id = adapter.class
  if (KV_ADAPTER_CLASSES.includes(id) || REDIS_ADAPTER_CLASSES.includes(id)) return
  const kind = adapterModuleKind(id)
  if (kind === null) return // normalizeOptions refuses it, naming the key
  const url = resolveAdapterModule(id, dirname(file))
  if (kind !== 'package') {
    let path = ''
    try {
      path = fileURLToPath(url)
    } catch {}
    if (path === '' || !existsSync(path) || !statSync(path).isFile()) fail(file, join(where, 'adapter.class'), `adapter module not found: ${path || id}`)
  }
  raw.adapter = { ...adapter, class: url }
}

function findStreamModule (file: string, list: unknown, listKey: string): { config: Raw, key: string, ignored: string[] } | null {
  if (list === undefined || list === null) return null
  if (!Array.isArray(list)) return fail(file, listKey, 'expected a list of modules')
  let found: { config: Raw, key: string } | null = null
  const ignored: string[] = []
  for (const [index, entry] of (list as unknown[]).entries()) {
    const key = join(listKey, index)
    if (!isPlainObject(entry)) fail(file, key, 'expected a module entry { class, config } or { name, config }')
    const id = entry.class ?? entry.name
    if (typeof id !== 'string' || id === '') fail(file, key, 'expected a module entry with a class or name')
    const isStreams = STREAM_MODULE_CLASSES.includes(id) || STREAM_WORKER_NAMES.includes(id)
    if (!isStreams) {
      ignored.push(id)
      continue
    }
    checkKeys(file, entry, MODULE_KEYS, key)
    if (entry.class !== undefined && entry.name !== undefined) fail(file, key, 'give either class or name, not both')
    if (found !== null) fail(file, key, `only one streams module is supported (already given at ${found.key})`)
    const config = entry.config ?? {}
    if (!isPlainObject(config)) fail(file, join(key, 'config'), 'expected a mapping of streams options')
    found = { config, key: join(key, 'config') }
  }
  if (found === null) {
    if (list.length === 0) return null
    return fail(file, listKey, `expected an entry with class ${STREAM_MODULE_CLASSES.join(' or ')} (or name ${STREAM_WORKER_NAMES.join(', ')})`)
  }
  return { ...found, ignored }
}

function appModule (file: string, base: string, entry: unknown, key: string): AppModule {
  let path: unknown = entry
  let options: unknown = {}
  if (isPlainObject(entry)) {
    checkKeys(file, entry, APP_MODULE_KEYS, key)
    path = entry.path
    options = entry.options ?? {}
    key = join(key, 'path')
  }
  if (typeof path !== 'string' || path === '') return fail(file, key, 'expected the path of an ES module (a string) or { path, options }')
  if (!isPlainObject(options)) return fail(file, key.replace(/\.path$/, '.options'), 'expected a mapping of options')
  const absolute = isAbsolute(path) ? path : resolve(base, path)
  if (!existsSync(absolute) || !statSync(absolute).isFile()) return fail(file, key, `module file not found: ${absolute}`)
  return { path: absolute, options, key }
}

/** Parses config text; `file` is used for messages and to resolve module paths. */
export function parseConfig (text: string, file: string, options: LoadConfigOptions = {}): LoadedConfig {
  const env = options.env ?? process.env
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true })
  if (doc.errors.length > 0) {
    const first = doc.errors[0]
    const line = first.linePos?.[0]
    const where = line === undefined ? '(yaml)' : `line ${line.line}, column ${line.col}`
    fail(file, where, `invalid YAML: ${first.message.split('\n')[0]}`)
  }
  expandTree(doc.contents as YamlNode | null, env, file, '', new Set())
  let root: unknown
  try {
    root = doc.toJS({ maxAliasCount: 100 })
  } catch (err) {
    return fail(file, '(yaml)', `invalid YAML: ${(err as Error).message}`)
  }
  if (root === null || root === undefined) root = {}
  if (!isPlainObject(root)) return fail(file, '(root)', 'expected a mapping with a modules list')
  checkKeys(file, root, TOP_KEYS, '')
  if (root.modules !== undefined && root.workers !== undefined) fail(file, 'workers', 'give either modules or workers, not both')
  const listKey = root.workers !== undefined ? 'workers' : 'modules'
  const stream = findStreamModule(file, root[listKey], listKey)

  const raw: Raw = { ...(stream?.config ?? {}) }
  const where = stream?.key ?? `${listKey}[0].config`
  locateAdapterModule(file, raw, where)
  const normalized = checked(file, where, () => normalizeOptions(raw))
  const { port, host } = checked(file, where, () => listenAddress(raw))
  delete raw.port
  delete raw.host

  const base = dirname(file)
  const list = root.app_modules ?? []
  if (!Array.isArray(list)) fail(file, 'app_modules', 'expected a list of module paths')
  const modules = (list as unknown[]).map((entry, index) => appModule(file, base, entry, join('app_modules', index)))

  return {
    file,
    options: raw as StreamsOptions,
    normalized,
    port,
    host,
    modules,
    ignored: stream?.ignored ?? []
  }
}

/** Reads and checks a config file. Without a file: the defaults (port `${STREAMS_PORT:31112}`, host 0.0.0.0, in memory). */
export function loadConfig (file?: string | null, options: LoadConfigOptions = {}): LoadedConfig {
  if (file === undefined || file === null) {
    const env = options.env ?? process.env
    const text = `modules:\n  - class: ${STREAM_MODULE_CLASSES[0]}\n    config:\n      port: \${STREAMS_PORT:${DEFAULT_PORT}}\n      host: ${DEFAULT_HOST}\n`
    return { ...parseConfig(text, '(defaults)', { env }), file: null }
  }
  const absolute = resolve(file)
  let text: string
  try {
    text = readFileSync(absolute, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    const reason = code === 'ENOENT' ? 'file not found' : code === 'EISDIR' ? 'is a directory, expected a YAML file' : `cannot read the file (${code ?? (err as Error).message})`
    return fail(absolute, '(file)', reason)
  }
  return parseConfig(text, absolute, options)
}

/**
 * A module named on the command line (`--module <file>`), relative to the working directory.
 * Throws ConfigError when the file does not exist.
 */
export function cliModule (path: string, cwd = process.cwd()): AppModule {
  const absolute = resolve(cwd, path)
  if (!existsSync(absolute) || !statSync(absolute).isFile()) fail(absolute, '--module', 'module file not found')
  return { path: absolute, options: {}, key: '--module' }
}

export type AppPlugin = (app: unknown, options: Record<string, unknown>) => unknown

/** Imports a user module; its default export must be a Fastify plugin function. */
export async function importAppModule (mod: AppModule): Promise<AppPlugin> {
  let loaded: { default?: unknown }
  try {
    loaded = await import(pathToFileURL(mod.path).href) as { default?: unknown }
  } catch (err) {
    const error = err as Error
    return fail(mod.path, mod.key, `cannot import the module: ${error.message.split('\n')[0]}`)
  }
  const plugin = loaded.default
  if (typeof plugin !== 'function') return fail(mod.path, mod.key, 'expected a default export that is a Fastify plugin function (async (app, opts) => {…})')
  return plugin as AppPlugin
}
