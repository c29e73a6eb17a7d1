// The official Durable Streams conformance suite, run by vitest against the server whose URL the tap test
// (test/http/durable-conformance.test.ts) passes in DURABLE_STREAMS_URL.
import { runConformanceTests } from '@durable-streams/server-conformance-tests'

const baseUrl = process.env.DURABLE_STREAMS_URL
if (baseUrl === undefined) throw new Error('DURABLE_STREAMS_URL is not set: run this file through test/http/durable-conformance.test.ts')

runConformanceTests({ baseUrl, longPollTimeoutMs: Number(process.env.DURABLE_STREAMS_LONG_POLL_MS) })
