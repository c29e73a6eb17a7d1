// Durable streams in process memory (the in_memory KvStore's, closed with it): gone with the process, like its items.
import { SerialBackend, StreamEngine, withinBudget, type StoredEntry, type StoredStream, type StreamBackend, type StreamTransaction } from './stream-engine.js'
import { messageCharacters, type Payload, type Position, type ProducerState } from './store.js'

/**
 * An entry as kept: a JSON entry's messages as one string, one message per line (messages hold no line break),
 * so a batch of a thousand messages is one string for the garbage collector to move, not a thousand.
 */
interface HeldEntry { start: Position, end: Position, bytes: Buffer | null, lines: string, weight: number }

interface Held { stream: StoredStream, entries: HeldEntry[], producers: Map<string, ProducerState> }

/** Entries looked at per call (a read asks again for more). */
const ENTRY_PAGE = 64

function hold (entry: StoredEntry): HeldEntry {
  const { start, end, payload } = entry
  if (payload.kind === 'bytes') return { start, end, bytes: payload.bytes, lines: '', weight: payload.bytes.length }
  // Weighed by message characters, as the other backends do.
  return { start, end, bytes: null, lines: payload.lines, weight: messageCharacters(payload) }
}

function stored (entry: HeldEntry): StoredEntry {
  const payload: Payload = entry.bytes !== null ? { kind: 'bytes', bytes: entry.bytes } : { kind: 'json', lines: entry.lines, count: entry.end - entry.start }
  return { start: entry.start, end: entry.end, payload }
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
