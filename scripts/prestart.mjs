// `npm start`'s build step: compile lib/ (tsc -b skips an up-to-date dist/) and bundle the example pages only
// when a bundle is missing or older than its sources, so a second start begins at once.
import { execFileSync } from 'node:child_process'
import { readdirSync, statSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { BUNDLE_ENTRIES } = await import('../example/harness.mjs')
const bundles = Object.keys(BUNDLE_ENTRIES).map(name => join(root, 'example', 'public', `${name}.js`))
const bundleSources = [join(root, 'example', 'src'), join(root, 'package-lock.json')]

function newestMtime (path) {
  const stat = statSync(path)
  if (!stat.isDirectory()) return stat.mtimeMs
  return Math.max(stat.mtimeMs, ...readdirSync(path).map(entry => newestMtime(join(path, entry))))
}

function mtimeOrZero (path) {
  try {
    return statSync(path).mtimeMs
  } catch {
    return 0
  }
}

const built = join(root, 'dist', 'index.js')
const before = mtimeOrZero(built)
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc')
execFileSync(process.execPath, [tsc, '-b', 'tsconfig.build.json'], { cwd: root, stdio: 'inherit' })
process.stdout.write(mtimeOrZero(built) === before ? 'dist/ is up to date\n' : 'built dist/\n')

if (Math.min(...bundles.map(mtimeOrZero)) <= Math.max(...bundleSources.map(newestMtime))) {
  const npm = process.env.npm_execpath
  if (npm) execFileSync(process.execPath, [npm, 'run', 'build:example'], { cwd: root, stdio: 'inherit' })
  else execFileSync('npm', ['run', 'build:example'], { cwd: root, stdio: 'inherit' })
} else {
  process.stdout.write('the example bundles are up to date\n')
}
