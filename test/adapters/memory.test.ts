import t from 'tap'
import { createKvAdapter } from '../../lib/adapters/kv.js'
import { adapterContract } from './contract.js'

adapterContract(t, async () => ({ adapter: createKvAdapter({ storeMethod: 'in_memory' }) }))
