// Durable streams in process memory (the in_memory KvStore's, closed with it): gone with the process, like its items.
import { SerialBackend, StreamEngine, storedPayload, withinBudget, type StoredEntry, type StoredStream, type StreamBackend, type StreamTransaction } from './stream-engine.js'
import { messageBytes, type Position, type ProducerState } from './store.js'

/**
 * An entry as kept: its bytes (a JSON entry's messages one per line), a short JSON entry's as a string (a string
 * costs a few bytes besides its text, a Buffer's own object more than a short message), and its weight for reads.
 */
interface HeldEntry { start: Position, end: Position, json: boolean, data: Buffer | string, weight: number }

interface Held { stream: StoredStream, entries: HeldEntry[], producers: Map<string, ProducerState> }

/** Entries looked at per call (a read asks again for more). */
const ENTRY_PAGE = 64

/**
 * JSON entries shorter than this are kept as strings: Node cuts such Buffers from a shared 8 KiB block, which a
 * kept one would keep whole.
 */
const SHORT_ENTRY_BYTES = Buffer.poolSize >>> 1

function hold (entry: StoredEntry): HeldEntry {
  const { start, end, payload } = entry
  if (payload.kind === 'bytes') return { start, end, json: false, data: payload.bytes, weight: payload.bytes.length }
  const { lines } = payload
  return { start, end, json: true, data: lines.length < SHORT_ENTRY_BYTES ? lines.toString('utf8') : lines, weight: messageBytes(payload) }
}

function stored (entry: HeldEntry): StoredEntry {
  const { start, end, data } = entry
  return { start, end, payload: storedPayload(typeof data === 'string' ? Buffer.from(data) : data, entry.json, end - start) }
}

/** Index of the first entry ending after `position` (entries are sorted and contiguous). */
function firstEndingAfter (entries: HeldEntry[], position: Position): number {
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
    const spans: Array<{ entry: HeldEntry, size: number }> = []
    for (let index = firstEndingAfter(entries, from); index < entries.length && entries[index].start < to && spans.length < ENTRY_PAGE; index++) {
      spans.push({ entry: entries[index], size: entries[index].weight })
    }
    return withinBudget(spans, maxBytes).map(span => stored(span.entry))
  }

  addEntry (id: string, entry: StoredEntry): void {
    this.byId.get(id)?.entries.push(hold(entry))
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
