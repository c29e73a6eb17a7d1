// Whether the backend answers: every adapter call reports its outcome here, so a loss and a recovery are logged
// once each (warn, then info), writes are counted by outcome, and the health route can answer a readiness probe.
import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import type { StreamAdapter } from './adapters/adapter.js'
import type { StreamsMetrics } from './metrics.js'
import type { NormalizedOptions } from './options.js'

export type BackendState = 'ready' | 'unreachable'

/** The longest the health route waits for the backend before it answers 503. */
export const HEALTH_PROBE_TIMEOUT_MS = 2000

const WRITES = new Set(['set', 'delete', 'update', 'publish'])
/** Calls that reach the backend; the others (start, subscribe, close, …) are passed through untouched. */
const BACKEND_CALLS = new Set([...WRITES, 'get', 'getGroup', 'listGroups', 'listAll', 'snapshotGroup', 'snapshotItem', 'readChanges'])

function isUnreachable (err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === 'STREAMS_ERR_BACKEND_UNAVAILABLE'
}

/** The adapter's name in logs, metrics and the health answer. */
export function adapterName (choice: NormalizedOptions['adapter']): string {
  switch (choice.kind) {
    case 'kv': return choice.config.storeMethod === 'in_memory' ? 'memory' : 'sqlite'
    case 'redis': return 'redis'
    case 'factory': return choice.name
    case 'module': return choice.specifier
    case 'instance': return choice.adapter.constructor?.name ?? 'custom'
  }
}

export class BackendMonitor {
  state: BackendState = 'ready'

  constructor (readonly adapterName: string, private readonly log: FastifyBaseLogger, private readonly metrics: StreamsMetrics) {}

  private lost (err: unknown): void {
    if (this.state === 'unreachable') return
    this.state = 'unreachable'
    this.log.warn({ err, adapter: this.adapterName }, 'fastify-streams: backend lost')
  }

  private back (): void {
    if (this.state === 'ready') return
    this.state = 'ready'
    this.log.info({ adapter: this.adapterName }, 'fastify-streams: backend back')
  }

  /** The adapter told the plugin its feed is back after a loss. */
  reconnected (): void {
    this.back()
    this.metrics.backendReconnected()
  }

  /** `adapter`, with each backend call reporting its outcome to the monitor (and writes to the metrics). */
  wrap (adapter: StreamAdapter): StreamAdapter {
    const calls = new Map<PropertyKey, unknown>()
    return new Proxy(adapter, {
      get: (target, key) => {
        const value = Reflect.get(target, key, target)
        if (typeof value !== 'function') return value
        let call = calls.get(key)
        if (call === undefined) {
          call = BACKEND_CALLS.has(key as string) ? this.observed(String(key), value.bind(target)) : value.bind(target)
          calls.set(key, call)
        }
        return call
      }
    })
  }

  private observed (op: string, call: (...args: unknown[]) => Promise<unknown>): (...args: unknown[]) => Promise<unknown> {
    const write = WRITES.has(op)
    return async (...args) => {
      try {
        const result = await call(...args)
        this.back()
        if (write) this.metrics.write(this.adapterName, op, 'ok')
        return result
      } catch (err) {
        if (isUnreachable(err)) this.lost(err)
        if (write) this.metrics.write(this.adapterName, op, String((err as { code?: unknown } | null)?.code ?? 'error'))
        throw err
      }
    }
  }

  /** One read of the backend, bounded by HEALTH_PROBE_TIMEOUT_MS; resolves with the error code on failure. */
  async probe (adapter: StreamAdapter): Promise<string | null> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<string>((resolve) => { timer = setTimeout(() => resolve('STREAMS_ERR_BACKEND_UNAVAILABLE'), HEALTH_PROBE_TIMEOUT_MS).unref() })
    try {
      return await Promise.race([adapter.get('fastify-streams', 'health', 'probe').then(() => null, (err) => String(err?.code ?? 'STREAMS_ERR_BACKEND_UNAVAILABLE')), timeout])
    } finally {
      clearTimeout(timer)
    }
  }
}

/** `health_path`: 200 `{ status: 'ok', adapter, backend: 'ready', connections }`, or 503 while the backend does not answer. */
export function healthRoute (app: FastifyInstance, path: string, monitor: BackendMonitor, adapter: StreamAdapter, connections: () => number, isClosed: () => boolean): void {
  app.get(path, async (_request, reply) => {
    const problem = isClosed() ? 'STREAMS_ERR_CLOSED' : await monitor.probe(adapter)
    const backend: BackendState = problem === null ? 'ready' : 'unreachable'
    return reply.code(problem === null ? 200 : 503).send({
      status: problem === null ? 'ok' : 'unavailable',
      adapter: monitor.adapterName,
      backend,
      connections: connections(),
      ...(problem === null ? {} : { code: problem })
    })
  })
}

/** `metrics_path`: the Prometheus text exposition of the registry the metrics are on. */
export function metricsRoute (app: FastifyInstance, path: string, metrics: StreamsMetrics): void {
  const registry = metrics.registry
  if (registry === null) return
  app.get(path, async (_request, reply) => reply.type(registry.contentType).send(await registry.metrics()))
}
