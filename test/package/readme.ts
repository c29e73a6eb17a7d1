// The README's code blocks, as the package test checks them.
//
// Rules (for whoever adds a block to the README):
// - Fences tagged ts, typescript, js, javascript, mjs or cjs are checked; anything else (sh, json, yaml, …) is not.
// - Each checked block is a complete module on its own: its imports included, nothing left undefined. It is
//   type-checked, strict, against the packed package installed in a fresh app, as a file of that app.
// - A JavaScript block that calls `require(` (or is tagged cjs) is CommonJS; other JavaScript blocks are ES modules.
// - A block that cannot stand alone (a fragment, a sketch of a signature) opts out with `nocheck` in its fence
//   info string: ```ts nocheck
// - The first TypeScript block under the heading "Use it in your app" is also run, and used with a stock client.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { root } from '../helpers/cli.js'

export interface ReadmeBlock {
  /** A file name for it in the app: readme-<n>.ts, .mjs or .cjs. */
  file: string
  /** 1-based line of the opening fence, for messages. */
  line: number
  /** The heading it sits under. */
  section: string
  code: string
}

const TYPESCRIPT = new Set(['ts', 'typescript'])
const JAVASCRIPT = new Set(['js', 'javascript', 'mjs', 'cjs'])

export function readmeBlocks (text = readFileSync(join(root, 'README.md'), 'utf8')): ReadmeBlock[] {
  const blocks: ReadmeBlock[] = []
  const lines = text.split('\n')
  let section = ''
  for (let at = 0; at < lines.length; at++) {
    const heading = /^#{1,6}\s+(.*)$/.exec(lines[at])
    if (heading !== null) section = heading[1].trim()
    const fence = /^(`{3,})\s*(\S*)(.*)$/.exec(lines[at])
    if (fence === null) continue
    const end = lines.findIndex((line, index) => index > at && line.startsWith(fence[1]) && line.trim() === fence[1])
    if (end < 0) throw new Error(`README.md:${at + 1}: a code fence is never closed`)
    const [lang, info] = [fence[2].toLowerCase(), fence[3]]
    const code = lines.slice(at + 1, end).join('\n') + '\n'
    const line = at + 1
    at = end
    if (/\bnocheck\b/.test(info) || (!TYPESCRIPT.has(lang) && !JAVASCRIPT.has(lang))) continue
    const extension = TYPESCRIPT.has(lang) ? 'ts' : lang === 'cjs' || /\brequire\(/.test(code) ? 'cjs' : 'mjs'
    blocks.push({ file: `readme-${blocks.length + 1}.${extension}`, line, section, code })
  }
  return blocks
}

/** The sample the README calls "Use it in your app": the first TypeScript block under that heading. */
export function mainSample (blocks: ReadmeBlock[]): ReadmeBlock {
  const sample = blocks.find(block => block.section === 'Use it in your app' && block.file.endsWith('.ts'))
  if (sample === undefined) throw new Error('README.md has no TypeScript block under "Use it in your app"')
  return sample
}
