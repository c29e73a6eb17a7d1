// Runs the official Durable Streams conformance suite (@durable-streams/server-conformance-tests) against this
// plugin: a Fastify app on port 0 with durable streams on, vitest run as a child process on
// test/http/conformance/suite.vitest.ts, its JSON report turned into tap assertions.
import { spawn } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'tap'
import type { StreamsOptions } from '../../../lib/index.js'
import { serve } from '../../helpers/app.js'

/** Long enough for a real wait, short enough that the suite's 5 s test time-out covers a full long-poll. */
const LONG_POLL_TIMEOUT_MS = 1500

interface VitestReport {
  numTotalTests: number
  numPassedTests: number
  numFailedTests: number
  numPendingTests: number
  testResults: Array<{ assertionResults: Array<{ fullName: string, status: string, failureMessages: string[] }> }>
}

async function runSuite (baseUrl: string): Promise<VitestReport> {
  const dir = await mkdtemp(join(tmpdir(), 'ds-conformance-'))
  const output = join(dir, 'report.json')
  try {
    const child = spawn(process.execPath, [
      'node_modules/vitest/vitest.mjs', 'run', '--config', 'test/http/conformance/vitest.config.ts',
      '--reporter=json', `--outputFile=${output}`
    ], {
      env: { ...process.env, DURABLE_STREAMS_URL: baseUrl, DURABLE_STREAMS_LONG_POLL_MS: String(LONG_POLL_TIMEOUT_MS) },
      stdio: ['ignore', 'ignore', 'inherit']
    })
    await new Promise(resolve => child.once('exit', resolve))
    return JSON.parse(await readFile(output, 'utf8')) as VitestReport
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

export async function conformance (name: string, options: StreamsOptions): Promise<void> {
  await test(`Durable Streams conformance suite on ${name}`, { timeout: 300_000 }, async (t) => {
    const { app } = await serve({ ...options, durable_streams: { long_poll_timeout_ms: LONG_POLL_TIMEOUT_MS } })
    t.teardown(() => app.close())
    const address = app.server.address()
    if (address === null || typeof address === 'string') throw new Error('no address')
    const report = await runSuite(`http://127.0.0.1:${address.port}`)
    const failed = report.testResults.flatMap(file => file.assertionResults.filter(result => result.status === 'failed'))
    for (const result of failed) t.comment(`failed: ${result.fullName}\n${result.failureMessages.join('\n').slice(0, 2000)}`)
    t.comment(`conformance on ${name}: ${report.numPassedTests} passed, ${report.numFailedTests} failed, ${report.numPendingTests} skipped of ${report.numTotalTests}`)
    t.ok(report.numPassedTests > 300, `${report.numPassedTests} conformance tests passed`)
    t.equal(report.numFailedTests, 0, 'no conformance test failed')
  })
}
