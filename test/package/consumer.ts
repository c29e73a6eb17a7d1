// An app that installs the packed package, as a user would: `npm pack` once per content of the package (every
// test file of a run shares the tarball), then `npm install` of it into a fresh directory from the npm cache.
// Install scripts are skipped: no consumer here uses SQLite, and nothing else the package pulls in builds code.
// While the package still depends on @keyv/sqlite (whose KvStore loads SQLite even in memory), the app takes the
// repository's built sqlite3 instead of compiling its own, which takes minutes.
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import { promisify } from 'node:util'
import { root } from '../helpers/cli.js'

const run = promisify(execFile)
const npmCli = process.env.npm_execpath ?? 'npm'

/** Runs npm (the one running the tests when there is one) in `cwd`; rejects with npm's output on failure. */
export async function npm (args: string[], cwd: string): Promise<string> {
  const [file, prefix] = npmCli.endsWith('.js') ? [process.execPath, [npmCli]] : [npmCli, []]
  try {
    const { stdout } = await run(file, [...prefix, ...args], { cwd, maxBuffer: 64 * 1024 * 1024, env: { ...process.env, npm_config_update_notifier: 'false' } })
    return stdout
  } catch (err) {
    const { stdout = '', stderr = '' } = err as { stdout?: string, stderr?: string }
    throw new Error(`npm ${args.join(' ')} failed in ${cwd}:\n${stderr}${stdout}`.slice(0, 8000))
  }
}

/** What `npm pack` takes: package.json, README, LICENSE, bin/ and dist/ (built by `npm test`'s pretest). */
function packageFingerprint (): string {
  const hash = createHash('sha256')
  const add = (path: string): void => {
    if (statSync(path).isDirectory()) {
      for (const entry of readdirSync(path).sort()) add(join(path, entry))
      return
    }
    hash.update(relative(root, path)).update('\0').update(readFileSync(path)).update('\0')
  }
  for (const path of ['package.json', 'README.md', 'LICENSE', 'bin', 'dist']) add(join(root, path))
  return hash.digest('hex').slice(0, 16)
}

let tarball: Promise<string> | undefined

/** The packed package: one tarball for a given content, shared by every test file and run that packs it. */
export async function packedTarball (): Promise<string> {
  tarball ??= (async () => {
    const dir = join(tmpdir(), 'fastify-streams-packed', packageFingerprint())
    const { name, version } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { name: string, version: string }
    const file = join(dir, `${name}-${version}.tgz`)
    if (existsSync(file)) return file
    mkdirSync(dir, { recursive: true })
    // Pack beside the target, then rename: test files packing at once never read a half-written tarball.
    const scratch = mkdtempSync(join(dir, 'pack-'))
    await npm(['pack', '--ignore-scripts', '--pack-destination', scratch], root)
    renameSync(join(scratch, `${name}-${version}.tgz`), file)
    rmSync(scratch, { recursive: true, force: true })
    return file
  })()
  return await tarball
}

export interface ConsumerApp { dir: string, remove(): void }

/**
 * A fresh app directory with `package.json` (`type`: module or commonjs) that installed the packed package and
 * `dependencies` (name → version), from the npm cache when it has everything (`--offline`), else the registry.
 */
export async function consumerApp (label: string, dependencies: Record<string, string>, type: 'module' | 'commonjs' = 'module'): Promise<ConsumerApp> {
  const dir = mkdtempSync(join(tmpdir(), `fastify-streams-${label}-`))
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: `consumer-${label}`, version: '1.0.0', private: true, type }, null, 2))
  const specs = [await packedTarball(), ...Object.entries(dependencies).map(([name, version]) => `${name}@${version}`)]
  const packaged = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { dependencies: Record<string, string> }
  if (packaged.dependencies['@keyv/sqlite'] !== undefined) specs.push(`sqlite3@file:${join(root, 'node_modules', 'sqlite3')}`)
  const flags = ['--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error']
  try {
    await npm(['install', ...specs, '--offline', ...flags], dir)
  } catch {
    await npm(['install', ...specs, '--prefer-offline', ...flags], dir)
  }
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) }
}

/** The repository's TypeScript compiler, run on a consumer's tsconfig. */
export async function typecheck (dir: string, project = 'tsconfig.json'): Promise<{ ok: boolean, output: string }> {
  const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
  try {
    await run(process.execPath, [tsc, '-p', project, '--noEmit'], { cwd: dir })
    return { ok: true, output: '' }
  } catch (err) {
    return { ok: false, output: String((err as { stdout?: string }).stdout ?? err) }
  }
}

/** Strict NodeNext, as a Fastify app written in TypeScript compiles (skipLibCheck off: our .d.ts files are checked too). */
export const STRICT_TSCONFIG = {
  compilerOptions: {
    target: 'ES2022',
    module: 'NodeNext',
    moduleResolution: 'NodeNext',
    strict: true,
    skipLibCheck: false,
    noEmit: true,
    types: ['node']
  }
}
