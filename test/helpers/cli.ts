// Running the standalone command as a child process, as a user would.
import { spawn, type ChildProcess } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const bin = join(root, 'bin', 'fastify-streams.js')

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
