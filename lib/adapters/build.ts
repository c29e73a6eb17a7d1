// Builds the adapter the options chose: a built-in (the Redis one imported only when chosen), a factory given in
// `adapters`, a factory exported by a module named in `adapter.class`, or the user's own object. Also the public
// `createRedisAdapter`, which keeps ioredis out of apps that never use it.
import { createRequire } from 'node:module'
import { isAbsolute, join, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import type { AdapterFactory, StreamAdapter } from './adapter.js'
import { KvAdapter } from './kv.js'
import type { RedisAdapter } from './redis.js'
import { normalizeRedisConfig, type RedisAdapterConfig, type RedisConfig } from './redis-config.js'
import { InvalidAdapterError, InvalidOptionError } from '../errors.js'
import { ADAPTER_METHODS, adapterModuleKind, sameRetention, type AdapterChoice } from '../options.js'

async function openRedisAdapter (config: RedisConfig): Promise<RedisAdapter> {
  const { RedisAdapter } = await import('./redis.js')
  return new RedisAdapter(config)
}

/** A RedisAdapter from its config as a user writes it (checked: InvalidOptionError); call `start()` before use. */
export async function createRedisAdapter (config: RedisAdapterConfig = {}): Promise<RedisAdapter> {
  return await openRedisAdapter(normalizeRedisConfig(config))
}

/**
 * Where a module named in `adapter.class` is: a `file:` URL for a path (relative to `base`), a URL, or a package
 * found from `base` (as a CommonJS `require` from there would find it). A package found nowhere from `base`, or
 * exported only for `import`, stays a bare name: `import()` then resolves it from this package's own place.
 */
export function resolveAdapterModule (specifier: string, base: string): string {
  const kind = adapterModuleKind(specifier)
  if (kind === 'url') return specifier
  if (kind === 'path') return pathToFileURL(resolve(base, specifier)).href
  try {
    const found = createRequire(join(base, 'noop.js')).resolve(specifier)
    return isAbsolute(found) ? pathToFileURL(found).href : specifier // a Node built-in stays as named
  } catch {
    return specifier
  }
}

type Factory = (config: Record<string, unknown>) => unknown

/** Imports the module and returns its factory: the `createAdapter` export, else the default export. */
async function importFactory (specifier: string): Promise<Factory> {
  const where = `adapter.class "${specifier}"`
  let loaded: { createAdapter?: unknown, default?: unknown }
  try {
    loaded = await import(resolveAdapterModule(specifier, process.cwd())) as typeof loaded
  } catch (err) {
    throw new InvalidAdapterError(`${where}: cannot import the module: ${(err as Error).message.split('\n')[0]}`)
  }
  const exported = typeof loaded.createAdapter === 'function' ? loaded.createAdapter : loaded.default
  if (typeof exported !== 'function') throw new InvalidAdapterError(`${where}: the module exports no factory (a default export or createAdapter function)`)
  // A class is built with `new`; a factory function is called.
  if (/^class\b/.test(Function.prototype.toString.call(exported))) {
    const Adapter = exported as new (config: Record<string, unknown>) => unknown
    return (config) => new Adapter(config)
  }
  return exported as Factory
}

/** Throws STREAMS_ERR_INVALID_ADAPTER naming every contract method `adapter` lacks. */
function checkAdapter (adapter: unknown, what: string): asserts adapter is StreamAdapter {
  const missing = ADAPTER_METHODS.filter(method => typeof (adapter as Record<string, unknown> | null)?.[method] !== 'function')
  if (missing.length > 0) throw new InvalidAdapterError(`${what} an object without ${missing.join(', ')}`)
}

/** Returns the adapter, and whether it is the plugin's to close (an adapter object the user passed in is borrowed). */
export async function buildAdapter (choice: AdapterChoice): Promise<{ adapter: StreamAdapter, owned: boolean }> {
  switch (choice.kind) {
    case 'instance': {
      checkAdapter(choice.adapter, 'adapter is')
      // A borrowed adapter keeps the retention it was made with: `feeds.retention` may only restate it.
      const own = choice.adapter.retention
      if (choice.retention !== null && (own === undefined || !sameRetention(own, choice.retention))) {
        throw new InvalidOptionError('feeds.retention', `differs from the adapter object's own (${own === undefined ? 'which it does not report' : JSON.stringify(own)}): set its change_log where it is made`)
      }
      return { adapter: choice.adapter, owned: false }
    }
    case 'kv':
      return { adapter: new KvAdapter(choice.config), owned: true }
    case 'redis':
      return { adapter: await openRedisAdapter(choice.config), owned: true }
    case 'factory':
    case 'module': {
      const factory: AdapterFactory | Factory = choice.kind === 'factory' ? choice.factory : await importFactory(choice.specifier)
      const adapter = await factory(choice.config)
      checkAdapter(adapter, `${choice.kind === 'factory' ? `"${choice.name}"` : `adapter.class "${choice.specifier}"`} returned`)
      return { adapter, owned: true }
    }
  }
}
