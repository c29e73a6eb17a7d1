import t from 'tap'
import { createKvAdapter } from '../../lib/adapters/kv.js'
import {
  DEFAULT_CHANGE_LOG_MAX_AGE_MS, DEFAULT_CHANGE_LOG_MAX_CHANGES, DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES
} from '../../lib/adapters/adapter.js'
import { normalizeOptions } from '../../lib/options.js'
import { adapterContract } from './contract.js'

adapterContract(t, async (options = {}) => {
  const make = () => createKvAdapter({ storeMethod: 'in_memory', ...options })
  const adapter = make()
  return { adapter, restart: async () => make(), durable: false, itemTimestamps: true, footprint: async () => adapter.groupCount }
})

t.test('change_log config: snake_case or camelCase, defaults per backend, 0 turns the log off, bad values refused', async t => {
  const kv = (config: Record<string, unknown>) => (normalizeOptions({ adapter: { class: 'kv', config } }).adapter as { config: unknown }).config
  t.match(kv({}), { changeLog: { maxChanges: DEFAULT_CHANGE_LOG_MAX_CHANGES, maxAgeMs: DEFAULT_CHANGE_LOG_MAX_AGE_MS } }, 'absent: the backend\'s defaults')
  t.match(kv({ change_log: {} }), { changeLog: { maxChanges: DEFAULT_CHANGE_LOG_MAX_CHANGES, maxAgeMs: DEFAULT_CHANGE_LOG_MAX_AGE_MS } })
  t.match(kv({ store_method: 'file_based', change_log: { max_age_ms: 10 } }), { changeLog: { maxChanges: DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES, maxAgeMs: 10 } })
  t.match((normalizeOptions({ adapter: { class: 'redis', config: { change_log: {} } } }).adapter as { config: unknown }).config, { changeLog: { maxChanges: DEFAULT_STORED_CHANGE_LOG_MAX_CHANGES } })
  t.match(kv({ change_log: { max_changes: 0, max_age_ms: 5 } }), { changeLog: { maxChanges: 0, maxAgeMs: 5 } })
  t.match(kv({ changeLog: { maxChanges: 7 } }), { changeLog: { maxChanges: 7, maxAgeMs: DEFAULT_CHANGE_LOG_MAX_AGE_MS } })
  for (const changeLog of [null, 5, { max_changes: -1 }, { max_changes: 1.5 }, { max_age_ms: 0 }, { max_size: 1 }]) {
    t.throws(() => kv({ change_log: changeLog }), { code: 'STREAMS_ERR_INVALID_OPTION' }, `change_log ${JSON.stringify(changeLog)} is refused`)
  }
})
