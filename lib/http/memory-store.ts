// Durable streams in process memory (the in_memory KvStore's, closed with it): gone with the process, like its items.
import { SerialBackend, StreamEngine, withinBudget, type StoredEntry, type StoredStream, type StreamBackend, type StreamTransaction } from './stream-engine.js'
import type { Position, ProducerState } from './store.js'

interface Held { stream: StoredStream, entries: StoredEntry[], producers: Map<string, ProducerState> }

/** Entries looked at per call (a read asks again for more). */
const ENTRY_PAGE = 64

/** Bytes (or message characters) an entry weighs against a read's budget. */
function entryWeight (entry: StoredEntry): number {
  return entry.payload.kind === 'bytes' ? entry.payload.bytes.length : entry.payload.messages.reduce((sum, message) => sum + message.length, 0)
}

/** Index of the first entry ending after `position` (entries are sorted and contiguous). */
function firstEndingAfter (entries: StoredEntry[], position: Position): number {
  let low = 0
  let high = entries.length
  while (low < high) {
    const middle = (low + high) >> 1
    if (entries[middle].end <= position) low = middle + 1
    else high = middle
  }
  return low
}

class MemoryBackend extends SerialBackend implements StreamBackend, StreamTransaction {
  private readonly byName = new Map<string, string>()
  private readonly byId = new Map<string, Held>()
  run<T> (_name: string, work: (tx: StreamTransaction) => Promise<T>): Promise<T> {
    // The engine checks everything before it writes, so an operation that throws has changed nothing.
    return this.serial(() => work(this))
  }

  async names (): Promise<string[]> {
    return [...this.byName.keys()]
  }

  publish (name: string): void {
    this.emit(name)
  }

  async close (): Promise<void> {
    await this.settle()
  }

  stream (name: string): StoredStream | null {
    const id = this.byName.get(name)
    return id === undefined ? null : this.byId.get(id)?.stream ?? null
  }

  streamById (id: string): StoredStream | null {
    return this.byId.get(id)?.stream ?? null
  }

  put (stream: StoredStream): void {
    const held = this.byId.get(stream.id)
    if (held !== undefined) held.stream = stream
    else this.byId.set(stream.id, { stream, entries: [], producers: new Map() })
    this.byName.set(stream.name, stream.id)
  }

  remove (stream: StoredStream): void {
    this.byId.delete(stream.id)
    if (this.byName.get(stream.name) === stream.id) this.byName.delete(stream.name)
  }

  entries (id: string, from: Position, to: Position, maxBytes: number): StoredEntry[] {
    const entries = this.byId.get(id)?.entries ?? []
    const spans: Array<{ entry: StoredEntry, size: number }> = []
    for (let index = firstEndingAfter(entries, from); index < entries.length && entries[index].start < to && spans.length < ENTRY_PAGE; index++) {
      spans.push({ entry: entries[index], size: entryWeight(entries[index]) })
    }
    return withinBudget(spans, maxBytes).map(span => span.entry)
  }

  addEntry (id: string, entry: StoredEntry): void {
    this.byId.get(id)?.entries.push(entry)
  }

  producer (id: string, producerId: string): ProducerState | null {
    return this.byId.get(id)?.producers.get(producerId) ?? null
  }

  setProducer (id: string, producerId: string, state: ProducerState): void {
    this.byId.get(id)?.producers.set(producerId, state)
  }
}

export function createMemoryDurableStore (): StreamEngine {
  return new StreamEngine(new MemoryBackend())
}
