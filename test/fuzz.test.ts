// Fuzzing a running app (issue 10, proof): random and mutated client frames, names and values. The server never
// throws (no error is logged, nothing escapes), a bystander keeps getting its events, and the stored data equals
// a simple model of the writes that were accepted. Runs are bounded so the file takes seconds, not minutes.
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import fc from 'fast-check'
import { WebSocket } from 'ws'
import { RawClient, serve, until, type Envelope, type LogLine } from './helpers/app.js'

const STREAMS = ['s0', 's1']
const GROUPS = ['g0', 'g1']
const IDS = ['a', 'b', 'c']

/** Names: mostly a few real ones (so writes meet), sometimes anything, lone surrogates and NUL included. */
const nameArb = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...STREAMS, ...GROUPS, ...IDS) },
  { weight: 1, arbitrary: fc.string({ unit: fc.constantFrom('a', ':', '\u0000', '\uD800', '\uDC00', '\uD83D\uDE00', '_') }) },
  { weight: 1, arbitrary: fc.constantFrom('', '__proto__', 'constructor', 'x'.repeat(300)) }
)
const streamArb = fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...STREAMS) }, { weight: 1, arbitrary: nameArb })
const groupArb = fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...GROUPS) }, { weight: 1, arbitrary: nameArb })
const idArb = fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...IDS) }, { weight: 1, arbitrary: nameArb })

function nested (depth: number): unknown {
  let value: unknown = 0
  for (let i = 0; i < depth; i++) value = { d: value }
  return value
}
const valueArb = fc.oneof(
  { weight: 8, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 200 }).map(nested) },
  { weight: 1, arbitrary: fc.constant('x'.repeat(5000)) }
)

type Command =
  | { kind: 'set', stream: string, group: string, id: string, value: unknown }
  | { kind: 'delete', stream: string, group: string, id: string }
  | { kind: 'update', stream: string, group: string, id: string, value: unknown }
  | { kind: 'send', stream: string, group: string, value: unknown }

const commandArb: fc.Arbitrary<Command> = fc.oneof(
  fc.record({ kind: fc.constant('set' as const), stream: streamArb, group: groupArb, id: idArb, value: valueArb }),
  fc.record({ kind: fc.constant('delete' as const), stream: streamArb, group: groupArb, id: idArb }),
  fc.record({ kind: fc.constant('update' as const), stream: streamArb, group: groupArb, id: idArb, value: valueArb }),
  fc.record({ kind: fc.constant('send' as const), stream: streamArb, group: groupArb, value: valueArb })
)

const validJoin = fc.record({ streamName: streamArb, groupId: groupArb, id: fc.option(idArb), subscriptionId: nameArb })
  .chain(data => fc.constantFrom('join', 'leave').map(type => JSON.stringify({ type, data })))

/** A valid frame with a few characters changed, cut or repeated. */
const mutatedFrame = fc.tuple(validJoin, fc.array(fc.tuple(fc.nat(), fc.constantFrom('cut', 'flip', 'dup', 'junk')), { maxLength: 4 }))
  .map(([frame, edits]) => edits.reduce((text, [at, edit]) => {
    const i = text.length === 0 ? 0 : at % text.length
    switch (edit) {
      case 'cut': return text.slice(0, i)
      case 'flip': return text.slice(0, i) + String.fromCharCode(text.charCodeAt(i) ^ 0x20) + text.slice(i + 1)
      case 'dup': return text.slice(0, i) + text.slice(i, i + 8).repeat(3) + text.slice(i)
      default: return text.slice(0, i) + '\uD800{"[' + text.slice(i)
    }
  }, frame))

const frameArb: fc.Arbitrary<string | Buffer> = fc.oneof(
  validJoin,
  mutatedFrame,
  fc.string(),
  fc.jsonValue().map(value => JSON.stringify(value) ?? ''),
  fc.uint8Array({ maxLength: 64 }).map(bytes => Buffer.from(bytes))
)

const isPlainObject = (value: unknown): value is Record<string, unknown> => value !== null && typeof value === 'object' && !Array.isArray(value)

/** The model: what each (stream, group) holds, in insertion order. */
class Model {
  readonly groups = new Map<string, Map<string, unknown>>()

  private group (stream: string, group: string): Map<string, unknown> {
    const key = JSON.stringify([stream, group])
    let items = this.groups.get(key)
    if (items === undefined) this.groups.set(key, items = new Map())
    return items
  }

  apply (command: Command): void {
    if (command.kind === 'send') return
    const items = this.group(command.stream, command.group)
    // inject_id: an object stored without `id` gets the item's id.
    const withId = (value: unknown): unknown => isPlainObject(value) && !Object.hasOwn(value, 'id') ? { ...value, id: command.id } : value
    if (command.kind === 'delete') items.delete(command.id)
    else if (command.kind === 'set') items.set(command.id, withId(command.value))
    else {
      // One `set` op on key `k`: a missing item starts from {}; a non-object (a stored null too: it is a value)
      // is left as it is (the op fails).
      const current = items.get(command.id)
      const base = current === undefined ? {} : current
      items.set(command.id, withId(isPlainObject(base) ? { ...base, k: command.value } : base))
    }
  }
}

async function run (app: FastifyInstance, command: Command): Promise<void> {
  const { stream, group } = command
  switch (command.kind) {
    case 'set': await app.streams.set(stream, group, command.id, command.value); break
    case 'delete': await app.streams.delete(stream, group, command.id); break
    case 'update': await app.streams.update(stream, group, command.id, [{ type: 'set', path: 'k', value: command.value }]); break
    case 'send': await app.streams.send(stream, group, { type: 'fuzz', data: command.value })
  }
}

/** A group subscriber's view: the sync, then the changes after it. */
function replay (frames: Envelope[]): Map<string, unknown> {
  const state = new Map<string, unknown>()
  for (const frame of frames) {
    const { type, data } = frame.event
    if (type === 'sync') {
      state.clear()
      for (const item of data as Array<{ id: string }>) state.set(item.id, item)
    } else if (type === 'delete') state.delete(frame.id!)
    else if (type === 'create' || type === 'update') state.set(frame.id!, data)
  }
  return state
}

t.test('fuzz: random and mutated frames, names and values against a running app', async t => {
  const lines: LogLine[] = []
  // Small limits so that the fuzzer reaches them; a high frame rate so that the attacker is not closed at once.
  const { app, url } = await serve({ max_value_depth: 32, max_value_bytes: 4096, max_invalid_frames: 1000, max_frame_rate: 100_000, frame_burst: 100_000 }, undefined, lines)
  t.teardown(() => app.close())
  const errors = (): unknown[] => lines.filter(line => line.level >= 50).map(line => line.msg)
  const escaped: unknown[] = []
  const onEscape = (err: unknown): void => { escaped.push(err) }
  process.on('uncaughtException', onEscape)
  process.on('unhandledRejection', onEscape)
  t.teardown(() => { process.off('uncaughtException', onEscape); process.off('unhandledRejection', onEscape) })

  // The bystander follows s0/g0 with an object id per item; its view must match the model.
  const bystander = await RawClient.open(url)
  t.teardown(() => bystander.close())
  bystander.join('s0', 'g0')
  await until(() => bystander.of('sync').length === 1, 'the bystander sync')
  const model = new Model()
  let marker = 0

  /** Writes a marker to the bystander's group and waits for it: every frame before it has arrived. */
  async function settle (): Promise<void> {
    const mark = `marker-${++marker}`
    await app.streams.send('s0', 'g0', { type: 'marker', data: mark })
    await until(() => bystander.frames.some(frame => frame.event.event?.data === mark), `marker ${mark}`)
  }

  await t.test('frames: the server never throws and the bystander keeps its events', async t => {
    let attacker = await RawClient.open(url)
    await fc.assert(fc.asyncProperty(fc.array(frameArb, { maxLength: 40 }), async (frames) => {
      if (attacker.socket.readyState !== WebSocket.OPEN) attacker = await RawClient.open(url)
      for (const frame of frames) attacker.socket.send(frame, { binary: Buffer.isBuffer(frame) })
      await app.streams.set('s0', 'g0', 'a', { id: 'a', n: marker })
      model.apply({ kind: 'set', stream: 's0', group: 'g0', id: 'a', value: { id: 'a', n: marker } })
      await settle()
    }), { numRuns: 150 })
    await attacker.close()
    t.same(errors(), [], 'nothing was logged as an error')
    t.same(escaped, [], 'nothing escaped')
  })

  await t.test('writes: every refusal is coded, the stored data equals the model, the bystander saw every change', async t => {
    await fc.assert(fc.asyncProperty(fc.array(commandArb, { maxLength: 30 }), async (commands) => {
      for (const command of commands) {
        try {
          await run(app, command)
        } catch (err) {
          const code = (err as { code?: unknown }).code
          if (typeof code !== 'string' || !code.startsWith('STREAMS_ERR_')) throw err
          continue
        }
        model.apply(command)
      }
      await settle()
    }), { numRuns: 150 })
    for (const [key, items] of model.groups) {
      const [stream, group] = JSON.parse(key) as [string, string]
      t.equal(JSON.stringify(await app.streams.getGroup(stream, group)), JSON.stringify([...items.values()]), `${stream}/${group} equals the model`)
    }
    const seen = replay(bystander.frames)
    const expected = model.groups.get(JSON.stringify(['s0', 'g0']))!
    t.equal(JSON.stringify([...seen.entries()].sort()), JSON.stringify([...expected.entries()].sort()), 'the bystander\'s view equals the model')
    t.same(errors(), [], 'nothing was logged as an error')
    t.same(escaped, [], 'nothing escaped')
    t.equal(bystander.closeCode, null, 'the bystander was never dropped')
  })
})
