// SqliteFile: the SQLite file behind KvStore `file_based`, on the `sqlite3` package (loaded only when a file
// store is configured). It keeps the items (each with its last-change timestamp), each group's revision and
// timestamp, the groups' change logs, the store's epoch and the revision floor of dropped groups. KvAdapter keeps
// the in-memory index that serves reads and decides every change; this file makes each change durable with its
// log row in one transaction, and serves the change log.
//
// Group commit: changes handed in while a commit runs wait, then all of them share the next transaction and
// its one fsync (WAL with synchronous=FULL); each is acknowledged once that commit returned.
import { randomBytes } from 'node:crypto'
import { mkdir } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import type { Database, RunResult } from 'sqlite3'
import type { ChangePage, ChangeRecord, StreamEventBody } from './adapter.js'
import { MissingPackageError, StorageError } from '../errors.js'

/**
 * The schema this code writes, recorded in the file's `user_version`. 2: items carry their last-change timestamp
 * (`ts`, NULL for items a version-1 file held), `store_meta` the revision floor of dropped groups, and the newest
 * log rows wait in `recent_changes` (see RECENT_ROWS).
 */
const SCHEMA_VERSION = 2
/** Changes one transaction takes at most; the rest go into the next one. */
const MAX_BATCH = 512
/** Characters of values one transaction takes at most (its SQL text holds them): past it, the next one. */
const MAX_BATCH_CHARS = 16 * 1024 * 1024
/** Change-log rows one age sweep deletes at most; a sweep that hits it runs again with the next commit. */
const SWEEP_ROWS = 1000
/** The page size of a new file (SQLite's default is 4096). */
const PAGE_SIZE = 1024
// Reads map the file instead of a read() per page: a durable stream's entry of 1 MiB spans a thousand 1 KiB pages
// (bench/durable.mjs catch-up reads went from 6 to 21 MB/s). Writes still go through write() and the WAL.
const MMAP_BYTES = 256 * 1024 * 1024
/** The longest wait between two age sweeps of a store that is being written. */
const MAX_SWEEP_INTERVAL_MS = 60_000
/**
 * Log rows that wait in `recent_changes` before they are moved, in one statement, into `changes`. A commit of
 * changes to n groups that wrote the (group, rev) index of `changes` rewrote n leaf pages of it (most of the
 * bytes each commit wrote and synced); appended to a table without index, they fill one or two pages, and the
 * move writes each group's leaf once per RECENT_ROWS rows. Readers scan this many rows at most.
 */
const RECENT_ROWS = 1024

const SCHEMA = `
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS groups (gid INTEGER PRIMARY KEY, stream TEXT NOT NULL, grp TEXT NOT NULL, rev INTEGER NOT NULL, ts INTEGER NOT NULL, UNIQUE (stream, grp));
CREATE TABLE IF NOT EXISTS items (gid INTEGER NOT NULL, id TEXT NOT NULL, value TEXT NOT NULL, ord INTEGER NOT NULL, ts INTEGER, PRIMARY KEY (gid, id));
CREATE TABLE IF NOT EXISTS changes (gid INTEGER NOT NULL, rev INTEGER NOT NULL, ts INTEGER NOT NULL, id TEXT, body TEXT NOT NULL, PRIMARY KEY (gid, rev));
CREATE TABLE IF NOT EXISTS recent_changes (seq INTEGER PRIMARY KEY, gid INTEGER NOT NULL, rev INTEGER NOT NULL, ts INTEGER NOT NULL, id TEXT, body TEXT NOT NULL);
`
// A group's log: its rows in `changes` and those still in `recent_changes`.
const GROUP_LOG = 'SELECT rev, ts, id, body FROM changes WHERE gid = ?1 UNION ALL SELECT rev, ts, id, body FROM recent_changes WHERE gid = ?1'
// The group's oldest logged revision in either table (NULL: none).
const FIRST_LOGGED = (gid: string) => `NULLIF(MIN(COALESCE((SELECT MIN(rev) FROM changes WHERE gid = ${gid}), 1e18),
  COALESCE((SELECT MIN(rev) FROM recent_changes WHERE gid = ${gid}), 1e18)), 1e18)`

// Each statement takes its rows written in as SQL literals (see values()), so a batch of any size is one
// statement per table, and the whole transaction one call.
const UPSERT_GROUPS = (rows: string) => `INSERT INTO groups (gid, stream, grp, rev, ts) VALUES ${rows}
  ON CONFLICT (gid) DO UPDATE SET rev = excluded.rev, ts = excluded.ts`
const UPSERT_ITEMS = (rows: string) => `INSERT INTO items (gid, id, value, ord, ts) VALUES ${rows}
  ON CONFLICT (gid, id) DO UPDATE SET value = excluded.value, ord = excluded.ord, ts = excluded.ts`
// Groups dropped for holding no item (their log aged out), and the revision floor that outlives them.
const DROP_GROUPS = (gids: string) => `DELETE FROM groups WHERE gid IN (${gids}); DELETE FROM items WHERE gid IN (${gids});
  DELETE FROM changes WHERE gid IN (${gids}); DELETE FROM recent_changes WHERE gid IN (${gids})`
const SET_REV_FLOOR = (floor: number) => `INSERT INTO store_meta (key, value) VALUES ('rev_floor', '${floor}')
  ON CONFLICT (key) DO UPDATE SET value = excluded.value`
const DELETE_ITEMS = (rows: string) => `DELETE FROM items WHERE (gid, id) IN (VALUES ${rows})`
const INSERT_CHANGES = (rows: string) => `INSERT INTO recent_changes (gid, rev, ts, id, body) VALUES ${rows}`
const MOVE_RECENT = `INSERT INTO changes (gid, rev, ts, id, body) SELECT gid, rev, ts, id, body FROM recent_changes ORDER BY seq;
  DELETE FROM recent_changes`
// (gid, last rev to drop): count retention, and the whole log of a group written while the log is off.
const TRIM_CHANGES = (rows: string) => `DELETE FROM changes WHERE rowid IN
  (SELECT c.rowid FROM (VALUES ${rows}) AS j JOIN changes c ON c.gid = j.column1 AND c.rev <= j.column2);
  DELETE FROM recent_changes WHERE seq IN
  (SELECT c.seq FROM (VALUES ${rows}) AS j JOIN recent_changes c ON c.gid = j.column1 AND c.rev <= j.column2)`
// Rows are appended in timestamp order (one clock per process, carried over restarts), so the oldest rows
// are the first ones: each sweep looks at a bounded prefix only.
const SWEEP_CHANGES = `DELETE FROM changes WHERE rowid IN
  (SELECT rowid FROM changes ORDER BY rowid LIMIT ${SWEEP_ROWS}) AND ts < ?`
const SWEEP_RECENT = 'DELETE FROM recent_changes WHERE ts < ?'
// One statement, so the page and the group's revision come from one read transaction. The oldest revision is
// asked by parameter, not of `g.gid`: a subquery that names a joined column runs again for every row of the page.
const READ_CHANGES = `SELECT g.rev AS grev, ${FIRST_LOGGED('?1')} AS first,
  c.rev AS rev, c.ts AS ts, c.id AS id, c.body AS body
  FROM groups g LEFT JOIN (SELECT * FROM (${GROUP_LOG}) WHERE rev > ?2 ORDER BY rev LIMIT ?3) c
  WHERE g.gid = ?1 ORDER BY c.rev`

/** A value as an SQL literal: integers as they are, text quoted (quotes doubled), text holding NUL as UTF-8 hex. */
function literal (value: string | number | null): string {
  if (value === null) return 'NULL'
  if (typeof value === 'number') return String(value)
  // A NUL would end the SQL text handed to SQLite: such text goes as a blob cast back to text, NUL kept.
  if (value.includes('\u0000')) return `CAST(X'${Buffer.from(value).toString('hex')}' AS TEXT)`
  return `'${value.replaceAll("'", "''")}'`
}

/** `(a, b), (c, d)`: rows of values as SQL literals. */
function values (rows: Array<Array<string | number | null>>): string {
  return rows.map(row => `(${row.map(literal).join(', ')})`).join(', ')
}

/** One committed change of a group, as the file records it. */
export interface FileChange {
  gid: number
  stream: string
  group: string
  rev: number
  timestamp: number
  /** The item written (its JSON text and place) or removed; absent for a published event. */
  item?: { id: string, text: string, order: number } | { id: string, removed: true }
  /** The log entry (the event body as JSON text); null when the log is off. */
  log: { id: string | null, body: string } | null
  /** Drop the group's log entries up to this revision in the same transaction. */
  trimTo?: number
}

/** A group dropped from the file (it holds no item and its log aged out), and the revision floor to keep. */
export interface FileDrop { drop: number, revFloor: number }

/** What the file held at start. */
export interface FileContents {
  epoch: string
  /** The highest revision a dropped group reached: new groups start above it. */
  revFloor: number
  groups: Array<{ gid: number, stream: string, group: string, rev: number, timestamp: number, firstLogged: number | null }>
  /** `timestamp`: the item's last change; null for items a version-1 file held. */
  items: Array<{ gid: number, id: string, text: string, order: number, timestamp: number | null }>
}

interface Pending { change: FileChange | FileDrop, resolve: () => void, reject: (err: Error) => void }

type Sqlite3 = typeof import('sqlite3')

async function loadSqlite3 (): Promise<Sqlite3> {
  try {
    const module = await import('sqlite3') as Sqlite3 & { default?: Sqlite3 }
    return module.default ?? module
  } catch (err) {
    if ((err as { code?: string }).code === 'ERR_MODULE_NOT_FOUND') throw new MissingPackageError('sqlite3', "store_method 'file_based'")
    throw err
  }
}

function open (sqlite3: Sqlite3, file: string, mode: number): Promise<Database> {
  return new Promise((resolve, reject) => {
    const db: Database = new sqlite3.Database(file, mode, (err) => err === null ? resolve(db) : reject(err))
  })
}

function run (db: Database, sql: string, params: unknown[] = []): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    db.run(sql, params, function (this: RunResult, err: Error | null) { err === null ? resolve(this) : reject(err) })
  })
}

function all<T> (db: Database, sql: string, params: unknown[] = []): Promise<T[]> {
  return new Promise((resolve, reject) => {
    db.all<T>(sql, params, (err, rows) => err === null ? resolve(rows) : reject(err))
  })
}

function exec (db: Database, sql: string): Promise<void> {
  return new Promise((resolve, reject) => { db.exec(sql, (err) => err === null ? resolve() : reject(err)) })
}

function noop (): void {}

function closeDb (db: Database | null): Promise<void> {
  return new Promise((resolve) => {
    if (db === null) resolve()
    else db.close(() => resolve())
  })
}

export class SqliteFile {
  private writer: Database | null = null
  private reader: Database | null = null
  private pending: Pending[] = []
  private committing: Promise<void> | null = null
  private scheduled = false
  private nextSweep = 0
  /** Rows in `recent_changes` (at most: see transaction()). */
  private recentRows = 0
  private readonly sweepIntervalMs: number

  constructor (private readonly filePath: string, private readonly maxAgeMs: number) {
    this.sweepIntervalMs = Math.min(maxAgeMs, MAX_SWEEP_INTERVAL_MS)
  }

  /** Opens (creating it and its folder if needed) and reads the file. Fails with STREAMS_ERR_STORAGE. */
  async open (): Promise<FileContents> {
    const sqlite3 = await loadSqlite3()
    const file = resolve(this.filePath)
    try {
      await mkdir(dirname(file), { recursive: true })
      this.writer = await open(sqlite3, file, sqlite3.OPEN_READWRITE | sqlite3.OPEN_CREATE)
      // One batch at a time, statements in the order given.
      this.writer.serialize()
      // Small pages for a new file: a commit of changes to n groups rewrites the tail leaf of n places of the
      // log's (group, rev) index, so the bytes each commit writes and syncs scale with the page size.
      await run(this.writer, `PRAGMA page_size=${PAGE_SIZE}`)
      await run(this.writer, 'PRAGMA journal_mode=WAL')
      // Every acknowledged commit is on disk (one fsync per commit, shared by the batch).
      await run(this.writer, 'PRAGMA synchronous=FULL')
      await run(this.writer, `PRAGMA mmap_size=${MMAP_BYTES}`)
      const [{ user_version: version }] = await all<{ user_version: number }>(this.writer, 'PRAGMA user_version')
      if (version > SCHEMA_VERSION) throw new Error(`the file was written by a newer version (schema ${version})`)
      // A write at every start: a file SQLite could only open read-only fails here, not at the first write.
      await exec(this.writer, `BEGIN IMMEDIATE; ${SCHEMA}`)
      try {
        if (version === 0) await this.importKeyvRows(this.writer)
        // Version 1 items have no timestamp: the store does not know their last change, so it says nothing.
        if (version === 1) await exec(this.writer, 'ALTER TABLE items ADD COLUMN ts INTEGER')
        // The recent rows join the indexed log now: the loads below then look for each group's oldest revision
        // in an empty table, not once per group through up to a thousand rows.
        await exec(this.writer, `${MOVE_RECENT}; PRAGMA user_version = ${SCHEMA_VERSION}; COMMIT;`)
      } catch (err) {
        await run(this.writer, 'ROLLBACK').catch(() => {})
        throw err
      }
      await run(this.writer, 'INSERT OR IGNORE INTO store_meta (key, value) VALUES (?, ?)', ['epoch', randomBytes(8).toString('hex')])
      const meta = new Map((await all<{ key: string, value: string }>(this.writer, 'SELECT key, value FROM store_meta')).map(row => [row.key, row.value]))
      const groups = await all<{ gid: number, stream: string, grp: string, rev: number, ts: number, first: number | null }>(this.writer,
        `SELECT gid, stream, grp, rev, ts, ${FIRST_LOGGED('g.gid')} AS first FROM groups g`)
      const [{ recent }] = await all<{ recent: number }>(this.writer, 'SELECT count(*) AS recent FROM recent_changes')
      this.recentRows = recent
      const items = await all<{ gid: number, id: string, value: string, ord: number, ts: number | null }>(this.writer, 'SELECT gid, id, value, ord, ts FROM items ORDER BY gid, ord')
      // Reads of the log go through their own connection: it sees committed transactions only.
      this.reader = await open(sqlite3, file, sqlite3.OPEN_READONLY)
      await run(this.reader, `PRAGMA mmap_size=${MMAP_BYTES}`)
      return {
        epoch: meta.get('epoch')!,
        revFloor: Number(meta.get('rev_floor') ?? 0),
        groups: groups.map(g => ({ gid: g.gid, stream: g.stream, group: g.grp, rev: g.rev, timestamp: g.ts, firstLogged: g.first })),
        items: items.map(i => ({ gid: i.gid, id: i.id, text: i.value, order: i.ord, timestamp: i.ts }))
      }
    } catch (err) {
      await this.close()
      throw new StorageError(`cannot open ${this.filePath}: ${(err as Error).message}`)
    }
  }

  /**
   * Imports a file written by the earlier keyv-based store (table `keyv`, one row per item and per group that
   * saw a delete), inside the opening transaction; its table is left as it was. Change logs start empty.
   */
  private async importKeyvRows (db: Database): Promise<void> {
    const [{ found }] = await all<{ found: number }>(db, "SELECT count(*) AS found FROM sqlite_master WHERE type = 'table' AND name = 'keyv'")
    if (found === 0) return
    const rows = await all<{ key: string, value: string }>(db, "SELECT key, value FROM keyv WHERE key LIKE 'fastifystreams:%'")
    const groups = new Map<string, [number, string, string, number, number]>()
    const items: Array<[number, string, string, number, number]> = []
    if (rows.length === 0) return
    for (const row of rows) {
      const [kind, stream, group, id] = JSON.parse(row.key.slice('fastifystreams:'.length)) as string[]
      // keyv's serializer put ':' before strings starting with ':'; its records are { value, expires }.
      const { value: record } = JSON.parse(row.value, (_key, value: unknown) => typeof value === 'string' && value.startsWith(':') ? value.slice(1) : value) as { value: { v?: unknown, o?: number, r: number, t: number } }
      const name = JSON.stringify([stream, group])
      const meta = groups.get(name) ?? [groups.size + 1, stream, group, 0, 0]
      meta[3] = Math.max(meta[3], record.r)
      meta[4] = Math.max(meta[4], record.t)
      groups.set(name, meta)
      // An item record's `t` is the timestamp of the item's own last write.
      if (kind === 'i') items.push([meta[0], id, JSON.stringify(record.v), record.o ?? 0, record.t])
    }
    await exec(db, UPSERT_GROUPS(values([...groups.values()])))
    if (items.length > 0) await exec(db, UPSERT_ITEMS(values(items)))
  }

  /** Resolves once `change` is committed (with the changes that shared its transaction). */
  commit (change: FileChange | FileDrop): Promise<void> {
    return new Promise((resolve, reject) => {
      this.pending.push({ change, resolve, reject })
      this.schedule()
    })
  }

  /** Drops group `gid` and records `revFloor`, with the next commit; resolves once committed. */
  drop (gid: number, revFloor: number): Promise<void> {
    return this.commit({ drop: gid, revFloor })
  }

  /**
   * Starts a commit once the current one is done. setImmediate, not a microtask: the writers woken by the
   * last commit hand in their next changes first, so they share one transaction.
   */
  private schedule (): void {
    if (this.scheduled || this.committing !== null) return
    this.scheduled = true
    setImmediate(() => {
      this.scheduled = false
      // An exclusive transaction started meanwhile: it schedules the batch when it ends.
      if (this.pending.length === 0 || this.committing !== null) return
      this.committing = this.commitBatch(this.pending.splice(0, this.batchSize())).finally(() => {
        this.committing = null
        if (this.pending.length > 0) this.schedule()
      })
    })
  }

  /** How many pending changes the next transaction takes: at least one, within both caps. */
  private batchSize (): number {
    let chars = 0
    let size = 0
    while (size < this.pending.length && size < MAX_BATCH) {
      const { change } = this.pending[size]
      if ('gid' in change) chars += (change.item !== undefined && 'text' in change.item ? change.item.text.length : 0) + (change.log?.body.length ?? 0)
      if (size > 0 && chars > MAX_BATCH_CHARS) break
      size++
    }
    return size
  }

  private async commitBatch (batch: Pending[]): Promise<void> {
    const db = this.writer
    try {
      if (db === null) throw new Error('the file is closed')
      await this.transaction(db, batch.map(p => p.change))
    } catch (err) {
      const error = new StorageError((err as Error).message)
      for (const p of batch) p.reject(error)
      return
    }
    for (const p of batch) p.resolve()
  }

  private async transaction (db: Database, batch: Array<FileChange | FileDrop>): Promise<void> {
    type Row = Array<string | number | null>
    const groups: Row[] = []
    const upserts: Row[] = []
    const removals: Row[] = []
    const logged: Row[] = []
    const trims: Row[] = []
    // A group is dropped after its last write: the batch's writes to it are left out, the drop goes first (a
    // group re-created under the same name in this batch takes a new gid, and its name must be free).
    const dropped = new Set<number>()
    let revFloor = -1
    for (const c of batch) {
      if ('drop' in c) {
        dropped.add(c.drop)
        revFloor = Math.max(revFloor, c.revFloor)
      }
    }
    const statements: string[] = []
    if (dropped.size > 0) statements.push(DROP_GROUPS([...dropped].join(', ')), SET_REV_FLOOR(revFloor))
    for (const c of batch) {
      if ('drop' in c || dropped.has(c.gid)) continue
      groups.push([c.gid, c.stream, c.group, c.rev, c.timestamp])
      if (c.item !== undefined) {
        if ('removed' in c.item) removals.push([c.gid, c.item.id])
        else upserts.push([c.gid, c.item.id, c.item.text, c.item.order, c.timestamp])
      }
      if (c.log !== null) logged.push([c.gid, c.rev, c.timestamp, c.log.id, c.log.body])
      if (c.trimTo !== undefined) trims.push([c.gid, c.trimTo])
    }
    if (groups.length > 0) statements.push(UPSERT_GROUPS(values(groups)))
    if (upserts.length > 0) statements.push(UPSERT_ITEMS(values(upserts)))
    if (removals.length > 0) statements.push(DELETE_ITEMS(values(removals)))
    const move = this.recentRows + logged.length > RECENT_ROWS
    if (move) statements.push(MOVE_RECENT)
    if (logged.length > 0) statements.push(INSERT_CHANGES(values(logged)))
    if (trims.length > 0) statements.push(TRIM_CHANGES(values(trims)))
    const now = Date.now()
    const sweep = now >= this.nextSweep
    try {
      // One call for the whole transaction: each statement run on its own would cost a trip through the event
      // loop, and commits wait on them. The age sweep, rare, runs apart (its row count decides the next one).
      if (!sweep) {
        await exec(db, `BEGIN; ${statements.join('; ')}; COMMIT;`)
      } else {
        await exec(db, `BEGIN; ${statements.join('; ')};`)
        const swept = await run(db, SWEEP_CHANGES, [now - this.maxAgeMs])
        await run(db, SWEEP_RECENT, [now - this.maxAgeMs])
        this.nextSweep = swept.changes === SWEEP_ROWS ? now : now + this.sweepIntervalMs
        await run(db, 'COMMIT')
      }
      // Rows trimmed, swept or dropped since are not counted off: the move only comes sooner.
      this.recentRows = (move ? 0 : this.recentRows) + logged.length
    } catch (err) {
      await run(db, 'ROLLBACK').catch(() => {})
      throw err
    }
  }

  /**
   * Runs `work` alone on the writer connection, between two batch commits: no batch starts until it settled.
   * Durable streams (lib/http/sqlite-store.ts) run their transactions here, on the same connection and with
   * the same durability (WAL, synchronous=FULL) as the items.
   */
  async exclusive<T> (work: (db: Database) => Promise<T>): Promise<T> {
    while (this.committing !== null) await this.committing
    const db = this.writer
    if (db === null) throw new StorageError('the file is closed')
    const done = work(db)
    this.committing = done.then(noop, noop).finally(() => {
      this.committing = null
      if (this.pending.length > 0) this.schedule()
    })
    return await done
  }

  /**
   * The group's committed log after `after`, with its committed revision; a group whose first write is not
   * committed yet answers `base` (the revision it starts from) for both.
   */
  async readChanges (gid: number, after: number, limit: number, base: number): Promise<Omit<ChangePage, 'epoch'>> {
    if (this.reader === null) throw new StorageError('the file is closed')
    let rows: Array<{ grev: number, first: number | null, rev: number | null, ts: number, id: string | null, body: string }>
    try {
      rows = await all(this.reader, READ_CHANGES, [gid, after, limit])
    } catch (err) {
      throw new StorageError((err as Error).message)
    }
    // No row: the group's first write is not committed yet.
    if (rows.length === 0) return { changes: [], rev: base, trimmed: base }
    const { grev, first } = rows[0]
    const changes: ChangeRecord[] = []
    for (const row of rows) {
      if (row.rev !== null) changes.push({ id: row.id, rev: row.rev, timestamp: row.ts, event: JSON.parse(row.body) as StreamEventBody })
    }
    return { changes, rev: grev, trimmed: first === null ? grev : first - 1 }
  }

  /** Waits for handed-in changes to commit, then closes the file. */
  async close (): Promise<void> {
    while (this.committing !== null || this.pending.length > 0 || this.scheduled) {
      await (this.committing ?? new Promise(resolve => setImmediate(resolve)))
    }
    const writer = this.writer
    const reader = this.reader
    this.writer = null
    this.reader = null
    await Promise.all([closeDb(reader), closeDb(writer)])
  }
}
