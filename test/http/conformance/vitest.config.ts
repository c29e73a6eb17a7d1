// vitest settings for the conformance run only (tap runs every other test).
import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/http/conformance/*.vitest.ts'],
    // One worker: the suite's tests share one server and some of them time TTL expiry.
    fileParallelism: false
  }
})
