// The official Durable Streams conformance suite against durable streams in the KvStore's SQLite file.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { conformance } from './conformance/run.js'

const dir = await mkdtemp(join(tmpdir(), 'ds-sqlite-'))
try {
  await conformance('SQLite', {
    adapter: { class: 'modules::streams::adapters::KvStore', config: { store_method: 'file_based', file_path: join(dir, 'streams.db') } }
  })
} finally {
  await rm(dir, { recursive: true, force: true })
}
