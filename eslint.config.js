import neostandard from 'neostandard'

export default neostandard({
  ts: true,
  ignores: ['dist/**', 'node_modules/**', 'example/public/bundle.js', 'example/public/react.js', 'example/public/feed.js', 'bench/results/**', '.tap/**', 'coverage/**', '.scratch/**']
})
