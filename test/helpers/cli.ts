// Running the standalone command as a child process, as a user would.
import { spawn, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const bin = join(root, 'bin', 'fastify-streams.js')

export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0))
    })
  })
}

export interface Run { child: ChildProcess, stdout: () => string, stderr: () => string, exit: Promise<number | null> }

/** Starts `fastify-streams <args>` (the built command) with extra environment, in `cwd` (the repo by default). */
export function run (args: string[], env: Record<string, string> = {}, cwd = root): Run {
  const child = spawn(process.execPath, [bin, ...args], { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout?.on('data', chunk => { stdout += String(chunk) })
  child.stderr?.on('data', chunk => { stderr += String(chunk) })
  const exit = new Promise<number | null>(resolve => child.once('exit', code => resolve(code)))
  return { child, stdout: () => stdout, stderr: () => stderr, exit }
}
