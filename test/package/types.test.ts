// The type tests (test/types/*.tst.ts, run by tstyche against the built package): what an app may write
// compiles, and what it must not (a misspelt trigger type, an unknown store method, a bad adapter config) fails.
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { root } from '../helpers/cli.js'

const run = promisify(execFile)

t.test('tstyche passes every type test', async t => {
  const tstyche = join(root, 'node_modules', 'tstyche', 'dist', 'bin.js')
  const result = await run(process.execPath, [tstyche], { cwd: root, env: { ...process.env, NODE_OPTIONS: '', NO_COLOR: '1' } })
    .then(({ stdout }) => ({ code: 0, stdout }), (err: { code?: number, stdout?: string, stderr?: string }) => ({ code: err.code ?? 1, stdout: `${err.stdout ?? ''}${err.stderr ?? ''}` }))
  t.equal(result.code, 0, 'tstyche exits 0', { output: result.stdout })
  const assertions = /Assertions:\s+(\d+) passed, (\d+) total/.exec(result.stdout)
  t.ok(assertions !== null && Number(assertions[1]) > 0 && assertions[1] === assertions[2], 'every assertion passed', { summary: assertions?.[0] })
})
