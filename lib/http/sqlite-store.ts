// Durable streams in the SQLite file of the file_based KvStore (tables ds_*), on the adapter's own writer
// connection, between its batch commits: an append is acknowledged once its transaction is committed to the
// write-ahead log with the adapter's synchronous=FULL, so it survives SIGKILL (and power loss) as items do.
// Operations handed in together share a transaction (group commit); an operation's writes wait until it is done
// and are dropped if it fails, so a group of appends to one stream writes its row once and each append's entry.
import type { Database, Statement } from 'sqlite3'
import { StorageError } from '../errors.js'
import { OperationGroup, SerialBackend, StreamEngine, answer, payloadBytes, runOperations, storedPayload, withinBudget, type StoredEntry, type StoredStream, type StreamBackend, type StreamTransaction, type GroupTransaction, type Outcome, type WaitingOperation } from './stream-engine.js'
import type { Position, ProducerState } from './store.js'

/** Rows fetched per query when a read walks a stream's entries. */
const ENTRY_PAGE = 64

// No PRAGMA here: the connection's settings (WAL, synchronous=FULL) are the adapter's, for items and streams.
const SCHEMA = [
  'CREATE TABLE IF NOT EXISTS ds_streams (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, row TEXT NOT NULL)',
  'CREATE TABLE IF NOT EXISTS ds_entries (stream_id TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL, json INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (stream_id, start)) WITHOUT ROWID',
  'CREATE TABLE IF NOT EXISTS ds_producers (stream_id TEXT NOT NULL, producer_id TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (stream_id, producer_id)) WITHOUT ROWID'
]

interface EntryRow { start: number, end: number, json: number, data: Buffer }

function toEntry (row: EntryRow): StoredEntry {
  return { start: row.start, end: row.end, payload: storedPayload(row.data, row.json === 1, row.end - row.start) }
}

/** The SQLite file that lends its writer connection (lib/adapters/sqlite.ts SqliteFile). */
export interface SqliteHost {
  exclusive<T> (work: (db: Database) => Promise<T>): Promise<T>
}

class SqliteBackend extends SerialBackend implements StreamBackend {
  /** The host's writer, while one of our operations holds it. */
  private db: Database | null = null
  /** Operations handed in while a transaction runs: the next one takes them (MAX_GROUP_OPERATIONS, MAX_GROUP_APPEND_BYTES). */
  private gathering: OperationGroup | null = null
  /** Prepared statements by SQL (each resolves once prepared), on the connection `preparedOn`. */
  private readonly prepared = new Map<string, Promise<Statement>>()
  private preparedOn: Database | null = null

  constructor (private readonly host: SqliteHost) {
    super()
  }

  private connection (): Database {
    if (this.db === null) throw new StorageError('durable streams used the SQLite file outside an operation')
    return this.db
  }

  /**
   * The statement of `sql`, prepared once on the writer: a statement run through the connection is prepared,
   * run and finalized each time, three trips to sqlite3's thread pool instead of one.
   */
  private statement (sql: string): Promise<Statement> {
    const db = this.connection()
    if (this.preparedOn !== db) {
      this.finalizeAll().catch(() => {})
      this.preparedOn = db
    }
    let statement = this.prepared.get(sql)
    if (statement === undefined) {
      // Calls queued on a statement that fails to prepare are never answered: each waits for its preparation.
      // One that failed is not kept (a later call prepares it again).
      const preparing = new Promise<Statement>((resolve, reject) => {
        const prepared: Statement = db.prepare(sql, (err: Error | null) => {
          if (err === null) return resolve(prepared)
          if (this.prepared.get(sql) === preparing) this.prepared.delete(sql)
          reject(err)
        })
      })
      statement = preparing
      this.prepared.set(sql, statement)
    }
    return statement
  }

  /** Finalizes the prepared statements (before the connection closes: it cannot close while any is open). */
  private async finalizeAll (): Promise<void> {
    const preparing = [...this.prepared.values()]
    this.prepared.clear()
    const statements = await Promise.all(preparing.map(statement => statement.catch(() => null)))
    await Promise.all(statements.map(statement => new Promise<void>(resolve => statement === null ? resolve() : statement.finalize(() => resolve()))))
  }

  async exec (sql: string, params: unknown[] = []): Promise<void> {
    const statement = await this.statement(sql)
    return new Promise((resolve, reject) => statement.run(params, (err: Error | null) => err === null ? resolve() : reject(err)))
  }

  /** The first row; every statement is stepped to its end (`all`), so none keeps a read open between calls. */
  async one<T> (sql: string, params: unknown[]): Promise<T | undefined> {
    return (await this.all<T>(sql, params))[0]
  }

  async all<T> (sql: string, params: unknown[]): Promise<T[]> {
    const statement = await this.statement(sql)
    return new Promise((resolve, reject) => statement.all(params, (err: Error | null, rows: unknown[]) => err === null ? resolve(rows as T[]) : reject(err)))
  }

  /** Runs `work` holding the host's writer. */
  private holding<T> (work: () => Promise<T>): Promise<T> {
    return this.host.exclusive(async (db) => {
      this.db = db
      try {
        return await work()
      } finally {
        this.db = null
      }
    })
  }

  async migrate (): Promise<void> {
    await this.holding(async () => { for (const statement of SCHEMA) await this.exec(statement) })
  }

  /**
   * Group commit: the operations handed in while a transaction runs share the next one, one after another (one
   * that fails leaves nothing and answers its error; the others commit). Each is answered once that transaction
   * is committed, so an acknowledged append is on disk, as with one transaction each, at one fsync per group
   * instead of one per append.
   */
  run<T> (_name: string, work: (tx: StreamTransaction) => Promise<T>, appendBytes = 0): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const operation: WaitingOperation = { work, resolve: resolve as (value: unknown) => void, reject }
      if (this.gathering?.add(operation, appendBytes) === true) return
      const group = new OperationGroup()
      group.add(operation, appendBytes)
      this.gathering = group
      this.serial(() => {
        if (this.gathering === group) this.gathering = null
        return this.commitGroup(group.operations)
      }).catch(() => {})
    })
  }

  private async commitGroup (group: WaitingOperation[]): Promise<void> {
    const outcomes: Outcome[] = []
    try {
      await this.holding(async () => {
        await this.exec('BEGIN IMMEDIATE')
        try {
          const tx = new SqliteTransaction(this)
          // Writes of earlier operations that failed half-way: nothing of the group may be committed.
          outcomes.push(...await runOperations(group, tx, error => error instanceof WriteFailed))
          await tx.write()
          await this.exec('COMMIT')
        } catch (err) {
          await this.exec('ROLLBACK').catch(() => {})
          throw err
        }
      })
    } catch (err) {
      // Nothing of the group was committed.
      for (const operation of group) operation.reject(err instanceof WriteFailed ? err.cause : err)
      return
    }
    answer(group, outcomes)
  }

  async names (): Promise<string[]> {
    return this.holding(async () => (await this.all<{ name: string }>('SELECT name FROM ds_streams', [])).map(row => row.name))
  }

  publish (name: string): void {
    this.emit(name)
  }

  /** Waits for the running operations and finalizes the statements; the connection stays open (it is the adapter's). */
  async close (): Promise<void> {
    await this.settle()
    await this.finalizeAll()
  }
}

/** A write waiting for its operation to be done; `key` names the row it replaces (a later write of it supersedes it). */
interface PendingWrite { sql: string, params: unknown[], key: string | null }

/** Where an operation started: what it read or wrote is forgotten if it fails. */
interface OperationStart { ids: Map<string, string | null>, rows: Map<string, string | null>, producers: Map<string, ProducerState | null> }

/** Writing the writes of the group's earlier operations failed: the whole transaction rolls back. */
class WriteFailed extends Error {}

const UPSERT_STREAM = 'INSERT INTO ds_streams (id, name, row) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET row = excluded.row'
const INSERT_ENTRY = 'INSERT INTO ds_entries (stream_id, start, end, json, data) VALUES (?, ?, ?, ?, ?)'
/**
 * Most entries one INSERT writes: each statement is a trip to sqlite3's thread pool, so the entries of a group
 * go in a few statements, not one each. Counts are powers of two, so few statements are ever prepared.
 */
const ENTRIES_PER_INSERT = 64
const insertEntries = (count: number): string => count === 1 ? INSERT_ENTRY : `${INSERT_ENTRY}${', (?, ?, ?, ?, ?)'.repeat(count - 1)}`
const UPSERT_PRODUCER = 'INSERT INTO ds_producers (stream_id, producer_id, epoch, seq) VALUES (?, ?, ?, ?) ON CONFLICT (stream_id, producer_id) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq'

/**
 * The operations of one group in their transaction. Stream rows and producer states are read once and kept as
 * written; writes wait until their operation is done (a failed one's are dropped) and reach the file before a
 * read of entries, and at the end, a row written several times only in its last version.
 */
class SqliteTransaction implements GroupTransaction<OperationStart> {
  /** Stream ids by name, stream rows (JSON) by id, producer states by stream id and producer: as read or written (null: none). */
  private ids = new Map<string, string | null>()
  private rows = new Map<string, string | null>()
  private producers = new Map<string, ProducerState | null>()
  /** Writes of the operations done, in order. */
  private pending: PendingWrite[] = []
  /** Writes of the running operation. */
  private running: PendingWrite[] = []

  constructor (private readonly sql: SqliteBackend) {}

  /** The next operation starts: the writes of the one before are final (it did not fail, or was rolled back). */
  mark (): OperationStart {
    this.pending.push(...this.running)
    this.running = []
    return { ids: new Map(this.ids), rows: new Map(this.rows), producers: new Map(this.producers) }
  }

  rollback (start: OperationStart): void {
    this.running = []
    this.ids = start.ids
    this.rows = start.rows
    this.producers = start.producers
  }

  /** Writes every operation's writes (at the end of the group). */
  async write (): Promise<void> {
    this.pending.push(...this.running)
    this.running = []
    await this.writeDone()
  }

  /** Writes the writes of the operations done before the running one. */
  private async writeDone (): Promise<void> {
    const writes = this.pending
    this.pending = []
    const last = new Map<string, number>()
    writes.forEach((write, index) => { if (write.key !== null) last.set(write.key, index) })
    const live = writes.filter((write, index) => write.key === null || last.get(write.key) === index)
    for (let index = 0; index < live.length;) {
      const write = live[index]
      if (write.sql !== INSERT_ENTRY) {
        await this.sql.exec(write.sql, write.params)
        index++
        continue
      }
      let entries = 1
      while (entries < ENTRIES_PER_INSERT && live[index + entries]?.sql === INSERT_ENTRY) entries++
      const count = 2 ** Math.floor(Math.log2(entries))
      await this.sql.exec(insertEntries(count), live.slice(index, index + count).flatMap(entry => entry.params))
      index += count
    }
  }

  async stream (name: string): Promise<StoredStream | null> {
    let id = this.ids.get(name)
    if (id === undefined) {
      const found = await this.sql.one<{ id: string, row: string }>('SELECT id, row FROM ds_streams WHERE name = ?', [name])
      id = found?.id ?? null
      this.ids.set(name, id)
      // A row this transaction removed or rewrote stays as it has it.
      if (found !== undefined && !this.rows.has(found.id)) this.rows.set(found.id, found.row)
    }
    return id === null ? null : this.streamById(id)
  }

  async streamById (id: string): Promise<StoredStream | null> {
    let row = this.rows.get(id)
    if (row === undefined) {
      row = (await this.sql.one<{ row: string }>('SELECT row FROM ds_streams WHERE id = ?', [id]))?.row ?? null
      this.rows.set(id, row)
    }
    // Parsed afresh: the engine changes the rows it is given before it puts them.
    return row === null ? null : JSON.parse(row) as StoredStream
  }

  async put (stream: StoredStream): Promise<void> {
    const row = JSON.stringify(stream)
    this.rows.set(stream.id, row)
    this.ids.set(stream.name, stream.id)
    this.running.push({ sql: UPSERT_STREAM, params: [stream.id, stream.name, row], key: `stream ${stream.id}` })
  }

  async remove (stream: StoredStream): Promise<void> {
    this.rows.set(stream.id, null)
    if (this.ids.get(stream.name) === stream.id) this.ids.set(stream.name, null)
    for (const table of ['ds_streams', 'ds_entries', 'ds_producers']) {
      this.running.push({ sql: `DELETE FROM ${table} WHERE ${table === 'ds_streams' ? 'id' : 'stream_id'} = ?`, params: [stream.id], key: null })
    }
  }

  async entries (id: string, from: Position, to: Position, maxBytes: number): Promise<StoredEntry[]> {
    // The entries of the operations done before this one must be in the file to be read.
    try {
      await this.writeDone()
    } catch (err) {
      throw new WriteFailed('writing the group\'s earlier operations failed', { cause: err })
    }
    // Entries are contiguous: the first one wanted is the last one starting at or before `from`. Sizes are
    // read first, so no more data than `maxBytes` (plus one entry) is ever loaded.
    const spans = await this.sql.all<{ start: number, end: number, size: number }>(
      `SELECT start, end, length(data) AS size FROM ds_entries WHERE stream_id = ?1 AND start < ?3 AND start >=
         coalesce((SELECT max(start) FROM ds_entries WHERE stream_id = ?1 AND start <= ?2), 0)
       ORDER BY start LIMIT ${ENTRY_PAGE}`, [id, from, to])
    const wanted = withinBudget(spans.filter(span => span.end > from), maxBytes)
    if (wanted.length === 0) return []
    const rows = await this.sql.all<EntryRow>('SELECT start, end, json, data FROM ds_entries WHERE stream_id = ? AND start >= ? AND start <= ? ORDER BY start',
      [id, wanted[0].start, wanted[wanted.length - 1].start])
    return rows.map(toEntry)
  }

  async addEntry (id: string, entry: StoredEntry): Promise<void> {
    const { payload } = entry
    this.running.push({ sql: INSERT_ENTRY, params: [id, entry.start, entry.end, payload.kind === 'json' ? 1 : 0, payloadBytes(payload)], key: null })
  }

  async producer (id: string, producerId: string): Promise<ProducerState | null> {
    const key = `${id}\u0000${producerId}`
    let state = this.producers.get(key)
    if (state === undefined) {
      state = await this.sql.one<ProducerState>('SELECT epoch, seq FROM ds_producers WHERE stream_id = ? AND producer_id = ?', [id, producerId]) ?? null
      this.producers.set(key, state)
    }
    return state === null ? null : { ...state }
  }

  async setProducer (id: string, producerId: string, state: ProducerState): Promise<void> {
    const key = `${id}\u0000${producerId}`
    this.producers.set(key, { ...state })
    this.running.push({ sql: UPSERT_PRODUCER, params: [id, producerId, state.epoch, state.seq], key: `producer ${key}` })
  }
}

/** Durable streams in the tables ds_* of `host`'s file (created when missing), on its writer connection. */
export async function createSqliteDurableStore (host: SqliteHost): Promise<StreamEngine> {
  const backend = new SqliteBackend(host)
  try {
    await backend.migrate()
  } catch (err) {
    throw new StorageError(`cannot create the durable stream tables: ${(err as Error).message}`)
  }
  return new StreamEngine(backend)
}
