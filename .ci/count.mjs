// Reads a TAP stream on stdin and prints `N passed, N failed`, counting every assertion at every depth.
// A subtest's own summary line is not counted again, except a failing subtest with no failing assertion
// inside (a crash, a time-out), which counts as one failure. Exits 1 when anything failed or nothing ran.
import { Parser } from 'tap-parser'

const totals = { passed: 0, failed: 0 }

/** Counts the assertions of one parser level; returns a getter of the failures counted below it. */
function watch (parser) {
  let failedHere = 0
  const children = []
  parser.on('child', (child) => children.push(watch(child)))
  parser.on('assert', (result) => {
    const child = children.length > 0 && children[children.length - 1].name === result.name ? children.pop() : null
    if (child !== null) {
      if (!result.ok && child.failed() === 0) { totals.failed++; failedHere++ }
      failedHere += child.failed()
      return
    }
    if (result.skip || result.todo) return
    if (result.ok) totals.passed++
    else { totals.failed++; failedHere++ }
  })
  return { get name () { return parser.name }, failed: () => failedHere }
}

const root = new Parser(() => {
  console.log(`${totals.passed} passed, ${totals.failed} failed`)
  process.exitCode = totals.failed > 0 || totals.passed === 0 ? 1 : 0
})
watch(root)
process.stdin.pipe(root)
