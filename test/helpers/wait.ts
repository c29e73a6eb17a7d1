// The one polling wait of the test suite, and the one free-port helper.
import { createServer } from 'node:net'

/** Polls `check` until it returns true; rejects naming `what` after `ms` (a hang guard, not a timing claim). */
export async function waitFor (check: () => boolean | Promise<boolean>, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 10))
  }
}

/** A TCP port free on 127.0.0.1 right now (never a fixed one). */
export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0))
    })
  })
}

/** A promise the test opens when it chooses: `opened` resolves once `open()` is called. */
export function gate (): { opened: Promise<void>, open: () => void } {
  let open: () => void = () => {}
  const opened = new Promise<void>(resolve => { open = resolve })
  return { opened, open }
}
