// Process plumbing shared by the benchmark scripts that start their own servers (durable.mjs, feeds.mjs,
// adapters.mjs): CPU pinning, free ports, a child server announcing `READY {json}`, a throwaway redis-server,
// and killing everything started here when the runner exits, also on failure.
import { spawn, spawnSync } from 'node:child_process'
import net from 'node:net'

export const HAS_TASKSET = spawnSync('taskset', ['-c', '0', 'true']).status === 0
export const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim()) || 100

/** The command prefix that pins a child to `cpu` (nothing when taskset is missing). */
export function pinned (cpu) {
  return HAS_TASKSET && cpu != null ? ['taskset', '-c', String(cpu)] : []
}

/** Pins every thread of this process to `cpu`; answers whether it did. */
export function pinSelf (cpu) {
  return HAS_TASKSET && spawnSync('taskset', ['-a', '-p', '-c', String(cpu), String(process.pid)]).status === 0
}

/**
 * Raises this process's soft limit of open files to its hard limit when it is below `wanted` (a runner holding
 * thousands of client sockets needs it); answers the limit in force. Node cannot call setrlimit itself, so the
 * runner re-executes itself under `sh -c 'ulimit -n …'` once; children inherit the raised limit.
 */
export function ensureFileLimit (wanted) {
  const soft = Number(spawnSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).stdout.trim())
  if (!Number.isFinite(soft) || soft >= wanted || process.env.BENCH_ULIMIT_RAISED) return soft
  const hard = spawnSync('sh', ['-c', 'ulimit -Hn'], { encoding: 'utf8' }).stdout.trim()
  const target = hard === 'unlimited' ? wanted : Math.min(wanted, Number(hard))
  if (!(target > soft)) return soft
  const quoted = [process.execPath, ...process.execArgv, ...process.argv.slice(1)].map(a => `'${a.replaceAll("'", "'\\''")}'`).join(' ')
  const result = spawnSync('sh', ['-c', `ulimit -n ${target} && exec ${quoted}`], { stdio: 'inherit', env: { ...process.env, BENCH_ULIMIT_RAISED: '1' } })
  process.exit(result.status ?? 1)
}

const started = new Set()
function killStarted () {
  for (const child of started) {
    try { child.stdin?.end() } catch {}
    try { process.kill(child.pid, 'SIGKILL') } catch {}
  }
}
process.on('exit', killStarted)
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    killStarted()
    process.exit(130)
  })
}

/** Spawns a child that is killed when this process exits; stdin is a pipe its end tells the child to go. */
export function spawnTracked (command, args, options = {}) {
  const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'], ...options })
  started.add(child)
  child.once('exit', () => started.delete(child))
  return child
}

function tail (text, n = 3000) {
  return text.length > n ? text.slice(-n) : text
}

/**
 * Starts `node <argv>` pinned to `cpu`; resolves once it prints `READY {json}` with that JSON plus
 * `child` and `stderr()`. The child must exit when its stdin closes (lib/common.mjs watchParent).
 */
export function startNode (argv, { cpu = 0, nodeArgs = [], env = {}, timeoutMs = 60_000 } = {}) {
  const command = [...pinned(cpu), process.execPath, ...nodeArgs, ...argv]
  const child = spawnTracked(command[0], command.slice(1), { env: { ...process.env, ...env } })
  let out = ''
  let err = ''
  child.stderr.on('data', (chunk) => { err = tail(err + chunk, 8000) })
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stopChild(child)
      reject(new Error(`${argv[0]} did not start in ${timeoutMs / 1000} s: ${tail(err)}`))
    }, timeoutMs)
    child.stdout.on('data', (chunk) => {
      out += chunk
      const match = /^READY (.*)$/m.exec(out)
      if (match) {
        clearTimeout(timer)
        out = ''
        resolve({ ...JSON.parse(match[1]), child, stderr: () => err })
      }
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`${argv[0]} exited (${code ?? signal}) before READY: ${tail(err)}`))
    })
  })
}

/**
 * Ends a child: stdin closed and `signal` (none when null: the child goes by itself once its stdin closes), SIGKILL
 * after `graceMs`; with 'SIGKILL', at once.
 */
export function stopChild (child, { signal = 'SIGTERM', graceMs = 3000 } = {}) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    const timer = setTimeout(() => { try { process.kill(child.pid, 'SIGKILL') } catch {} }, graceMs)
    child.once('exit', () => {
      clearTimeout(timer)
      resolve()
    })
    if (signal !== 'SIGKILL') try { child.stdin.end() } catch {}
    if (signal !== null) try { process.kill(child.pid, signal) } catch {}
  })
}

export function freePort () {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
    server.on('error', reject)
  })
}

function accepts (port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => { socket.destroy(); resolve(true) })
    socket.on('error', () => resolve(false))
  })
}

/**
 * Starts redis-server on a free loopback port, no persistence, pinned to `cpu`. A shell holds it and kills it
 * when our stdin pipe closes, so it dies with the runner even when the runner is killed. Resolves once it
 * accepts connections with { url, port, pid, stop }.
 */
export async function startRedis ({ cpu = null } = {}) {
  const port = await freePort()
  const script = `${pinned(cpu).join(' ')} redis-server --port ${port} --bind 127.0.0.1 --save '' --appendonly no --protected-mode no --loglevel warning & ` +
    'echo "PID $!"; cat >/dev/null; kill $! 2>/dev/null; wait'
  const holder = spawnTracked('sh', ['-c', script])
  let out = ''
  holder.stdout.on('data', (chunk) => { out += chunk })
  const deadline = Date.now() + 10_000
  let pid = null
  while (pid === null || !(await accepts(port))) {
    if (Date.now() > deadline) throw new Error('redis-server did not accept connections within 10 s')
    pid ??= Number(/PID (\d+)/.exec(out)?.[1]) || null
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    pid,
    stop: async () => {
      // The holding shell kills redis-server and reaps it once its stdin closes.
      await stopChild(holder, { signal: null })
    }
  }
}
