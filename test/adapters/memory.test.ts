import t from 'tap'
import { createKvAdapter } from '../../lib/adapters/kv.js'
import { adapterContract } from './contract.js'

adapterContract(t, async (options = {}) => {
  const make = () => createKvAdapter({ kind: 'kv', storeMethod: 'in_memory', ...options })
  return { adapter: make(), restart: async () => make(), durable: false }
})
