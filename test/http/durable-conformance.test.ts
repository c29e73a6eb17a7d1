// The official Durable Streams conformance suite against durable streams on the in-memory KvStore.
import { conformance } from './conformance/run.js'

await conformance('memory', {})
