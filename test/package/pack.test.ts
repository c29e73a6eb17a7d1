// What `npm pack` puts in the tarball: the built plugin, its types, the command, README and LICENSE; no tests,
// benchmarks, examples, sources or source maps.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { root } from '../helpers/cli.js'
import { npm } from './consumer.js'

interface PackReport { files: Array<{ path: string }> }

t.test('the tarball holds dist, bin, README and LICENSE, and nothing else', async t => {
  const [report] = JSON.parse(await npm(['pack', '--dry-run', '--json', '--ignore-scripts'], root)) as PackReport[]
  const files = report.files.map(file => file.path).sort()
  for (const path of ['package.json', 'README.md', 'LICENSE', 'bin/fastify-streams.js', 'dist/index.js', 'dist/index.d.ts', 'dist/types.d.ts', 'dist/config.js']) {
    t.ok(files.includes(path), `${path} is packed`)
  }
  const unexpected = files.filter(path => !/^(package\.json|README\.md|LICENSE|bin\/fastify-streams\.js|dist\/.+\.(js|d\.ts))$/.test(path))
  t.same(unexpected, [], 'no file outside dist/*.js, dist/*.d.ts, bin, README, LICENSE, package.json')
  t.same(files.filter(path => /^(test|bench|example|lib|docs)\//.test(path) || path.endsWith('.map')), [], 'no tests, benchmarks, examples, sources or source maps')
})

t.test('the packed JavaScript points at no source map', async t => {
  const [report] = JSON.parse(await npm(['pack', '--dry-run', '--json', '--ignore-scripts'], root)) as PackReport[]
  const mapped = report.files.map(file => file.path).filter(path => path.endsWith('.js') && readFileSync(join(root, path), 'utf8').includes('sourceMappingURL'))
  t.same(mapped, [], 'no sourceMappingURL comment to a file the package does not ship')
})

t.test('package.json says where the project lives and what it needs', async t => {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
  t.equal(pkg.license, 'MIT')
  t.match(readFileSync(join(root, 'LICENSE'), 'utf8'), /MIT License[\s\S]*fastify-streams contributors/)
  t.equal(pkg.repository.url, 'git+https://github.com/fastify-streams/fastify-streams.git')
  t.match(pkg.bugs.url, /^https:\/\/github\.com\/fastify-streams\/fastify-streams\/issues$/)
  t.match(pkg.homepage, /^https:\/\/github\.com\/fastify-streams\/fastify-streams/)
  t.ok(pkg.keywords.includes('fastify'), 'keywords')
  t.notOk(pkg.dependencies.fastify, 'fastify is not a dependency: the app brings its own')
  t.equal(pkg.peerDependencies.fastify, '5.x', 'fastify is a peer, the range fastify-plugin checks')
  t.ok(pkg.devDependencies.fastify, 'and a dev dependency')
  t.same(pkg.exports['.'], { types: './dist/index.d.ts', import: './dist/index.js', require: './dist/index.js', default: './dist/index.js' })
})

t.test('README links to files the tarball lacks are absolute', async t => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8')
  const relativeLinks = [...readme.matchAll(/\]\(([^)#\s]+)[^)]*\)/g)].map(match => match[1]).filter(target => !/^[a-z]+:/.test(target))
  t.same(relativeLinks, [], 'every link works from the package page (absolute URLs or anchors)')
})
