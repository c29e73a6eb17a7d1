// vitest settings for the conformance run only (tap runs every other test).
import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/http/conformance/*.vitest.ts'],
    // One worker: the suite's tests share one server and some of them time TTL expiry.
    fileParallelism: false,
    // Some cases check every byte of a 100 KiB body with one expect() each: seconds on a busy 2-core machine,
    // past vitest's 5 s default. The suite's own waits (long-poll, TTL) are far shorter than this.
    testTimeout: 30_000
  }
})
