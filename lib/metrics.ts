// Prometheus metrics (prom-client, loaded only when metrics are on). With metrics off every call is a no-op, so
// the hot paths call them unconditionally.
import type { Registry } from 'prom-client'
import type { RefusalReason } from './limits.js'
import type { OperationOptions } from './options.js'

export interface StreamsMetrics {
  refused(reason: RefusalReason): void
  joined(): void
  left(count: number): void
  frameIn(): void
  framesOut(frames: number, bytes: number): void
  /** A socket closed for what it failed to read (1013) or for piling up frames (1008). */
  slowConsumerClosed(code: number): void
  synced(bytes: number, seconds: number): void
  write(adapter: string, op: string, outcome: string): void
  backendReconnected(): void
  /** The registry the metrics are on, or null when metrics are off. */
  readonly registry: Registry | null
}

const noop = (): void => {}

export const NO_METRICS: StreamsMetrics = {
  refused: noop,
  joined: noop,
  left: noop,
  frameIn: noop,
  framesOut: noop,
  slowConsumerClosed: noop,
  synced: noop,
  write: noop,
  backendReconnected: noop,
  registry: null
}

export interface MetricsSources {
  sockets(): number
  subscriptions(): number
  /** Stored items the adapter could not read and skipped (its `skippedItems`; 0 when it keeps no count). */
  skippedItems(): number
}

/** Sync frame sizes in bytes: 1 KiB to 64 MiB by powers of 4. */
const SYNC_BYTES_BUCKETS = [1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
const SYNC_SECONDS_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5]

/** The metrics the options ask for: none unless `metrics_path` or `metrics_registry` is given. */
export async function metricsFor (operations: OperationOptions, sources: MetricsSources): Promise<StreamsMetrics> {
  if (operations.metricsPath === null && operations.metricsRegistry === null) return NO_METRICS
  return createMetrics(operations.metricsRegistry as Registry | null, sources)
}

/** The plugin's metrics on `registry` (the app's), or on a registry of their own when none is given. */
export async function createMetrics (registry: Registry | null, sources: MetricsSources): Promise<StreamsMetrics> {
  const prom = await import('prom-client')
  const registers = [registry ?? new prom.Registry()]
  const name = (suffix: string): string => `fastify_streams_${suffix}`
  // Gauges read when scraped.
  const gauges = [
    ['open_sockets', 'Open stream sockets', sources.sockets],
    ['subscriptions', 'Open subscriptions', sources.subscriptions],
    ['skipped_items', 'Stored items skipped because they could not be read (not JSON, or nested too deep)', sources.skippedItems]
  ] as const
  for (const [suffix, help, read] of gauges) {
    registers[0].registerMetric(new prom.Gauge({ name: name(suffix), help, registers: [], collect () { this.set(read()) } }))
  }
  const joins = new prom.Counter({ name: name('joins_total'), help: 'Joins accepted', registers })
  const leaves = new prom.Counter({ name: name('leaves_total'), help: 'Subscriptions left (by a leave frame or a closed socket)', registers })
  const refusals = new prom.Counter({ name: name('refusals_total'), help: 'Handshakes, joins and sockets refused, by reason', labelNames: ['reason'], registers })
  const framesIn = new prom.Counter({ name: name('frames_in_total'), help: 'Client frames received', registers })
  const framesOut = new prom.Counter({ name: name('frames_out_total'), help: 'Frames written to sockets', registers })
  const bytesOut = new prom.Counter({ name: name('bytes_out_total'), help: 'Bytes of frames written to sockets', registers })
  const slowCloses = new prom.Counter({ name: name('slow_consumer_closes_total'), help: 'Sockets closed for falling behind, by close code', labelNames: ['code'], registers })
  const syncBytes = new prom.Histogram({ name: name('sync_bytes'), help: 'Size of sync frames', buckets: SYNC_BYTES_BUCKETS, registers })
  const syncSeconds = new prom.Histogram({ name: name('sync_duration_seconds'), help: 'Time to read and send a sync', buckets: SYNC_SECONDS_BUCKETS, registers })
  const writes = new prom.Counter({ name: name('write_ops_total'), help: 'Adapter writes by adapter, operation and outcome', labelNames: ['adapter', 'op', 'outcome'], registers })
  const reconnects = new prom.Counter({ name: name('backend_reconnects_total'), help: 'Times the shared backend came back after a loss', registers })
  return {
    refused: (reason) => refusals.inc({ reason }),
    joined: () => joins.inc(),
    left: (count) => leaves.inc(count),
    frameIn: () => framesIn.inc(),
    framesOut: (frames, bytes) => { framesOut.inc(frames); bytesOut.inc(bytes) },
    slowConsumerClosed: (code) => slowCloses.inc({ code: String(code) }),
    synced: (bytes, seconds) => { syncBytes.observe(bytes); syncSeconds.observe(seconds) },
    write: (adapter, op, outcome) => writes.inc({ adapter, op, outcome }),
    backendReconnected: () => reconnects.inc(),
    registry: registers[0]
  }
}
