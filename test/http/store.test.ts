// The JSON messages of an append body: the scanner that cuts them from the body's text accepts exactly what
// JSON.parse accepts, and the messages it cuts mean what the body's elements mean, each on one line.
import { deepStrictEqual, equal, ok } from 'node:assert/strict'
import { isUtf8 } from 'node:buffer'
import t from 'tap'
import fc from 'fast-check'
import { jsonArray, jsonPayload, mediaType } from '../../lib/http/store.js'

/** The messages of a body as jsonPayload keeps them (one per line), checked against its count and its array form. */
function jsonMessages (body: Buffer, allowEmpty: boolean): string[] {
  const payload = jsonPayload(body, allowEmpty)
  const messages = payload.count === 0 ? [] : payload.lines.toString('utf8').split('\n')
  equal(messages.length, payload.count, 'as many lines as messages')
  deepStrictEqual(JSON.parse(jsonArray(payload).toString('utf8')), messages.map(message => JSON.parse(message) as unknown), 'the array form holds the same messages')
  return messages
}

/** jsonMessages' answer, or the code of its refusal. */
function outcome (text: string): string[] | { code: string } {
  try {
    return jsonMessages(Buffer.from(text), true)
  } catch (err) {
    return { code: (err as { code: string }).code }
  }
}

function parses (text: string): boolean {
  try {
    JSON.parse(text)
    return true
  } catch {
    return false
  }
}

/** `value` as JSON with spaces and tabs (`gaps`, taken in turn) between its tokens, on one line. */
function spaced (value: unknown, gaps: string[]): string {
  let turn = 0
  const gap = (): string => gaps.length === 0 ? '' : gaps[turn++ % gaps.length]
  const write = (v: unknown): string => {
    if (Array.isArray(v)) return `[${gap()}${v.map(write).join(`${gap()},${gap()}`)}${gap()}]`
    if (v !== null && typeof v === 'object') {
      const fields = Object.entries(v).map(([key, item]) => `${JSON.stringify(key)}${gap()}:${gap()}${write(item)}`)
      return `{${gap()}${fields.join(`${gap()},${gap()}`)}${gap()}}`
    }
    return JSON.stringify(v)
  }
  return `${gap()}${write(value)}${gap()}`
}

const gaps = fc.array(fc.constantFrom('', ' ', '\t', '  ', ' \t'), { maxLength: 5 })

t.test('a JSON text on one line becomes its elements (an array) or itself, unchanged and without the spaces around', async (t) => {
  fc.assert(fc.property(fc.jsonValue(), gaps, (value, chosen) => {
    const text = spaced(value, chosen)
    const messages = jsonMessages(Buffer.from(text), true)
    const elements = Array.isArray(value) ? value : [value]
    deepStrictEqual(messages.map(message => JSON.parse(message)), JSON.parse(JSON.stringify(elements)))
    for (const message of messages) {
      equal(message, message.trim(), 'no spaces around a message')
      // Cut from the text: what the client sent, not a re-serialisation.
      ok(text.includes(message), 'a slice of the body')
    }
  }), { numRuns: 300 })
  t.pass('300 values with random spaces and tabs')
})

t.test('any characters, one byte or several: each message as the body wrote it, on a line of its own', async (t) => {
  // Commas alone between the elements (of any UTF-8 body) are turned into line breaks in one copy; other bodies are cut.
  t.same(jsonMessages(Buffer.from('[{"a":"x,y"},[1,2],"b","c\\"d"]'), false), ['{"a":"x,y"}', '[1,2]', '"b"', '"c\\"d"'])
  t.same(jsonMessages(Buffer.from('["é",{"k":"日本"},"ü","😀"]'), false), ['"é"', '{"k":"日本"}', '"ü"', '"😀"'])
  t.same(jsonMessages(Buffer.from('["a", "é",1]'), false), ['"a"', '"é"', '1'])
  t.same(jsonMessages(Buffer.from('[1,2 ,3]'), false), ['1', '2', '3'])
  fc.assert(fc.property(fc.array(fc.jsonValue({ stringUnit: 'grapheme' }), { minLength: 1 }), gaps, (values, chosen) => {
    const text = spaced(values, chosen)
    const messages = jsonMessages(Buffer.from(text), false)
    deepStrictEqual(messages.map(message => JSON.parse(message)), JSON.parse(JSON.stringify(values)))
    for (const message of messages) ok(text.includes(message), 'as the body wrote it')
  }), { numRuns: 300 })
  t.pass('300 arrays of values with any characters')
})

t.test('bodies with line breaks: each message is serialised again, on one line', async (t) => {
  t.same(jsonMessages(Buffer.from('[1,\n {"a": [2,\r\n 3]}\n]'), false), ['1', '{"a":[2,3]}'])
  t.same(jsonMessages(Buffer.from('{\n"a": 1}\n'), false), ['{"a":1}'])
  fc.assert(fc.property(fc.jsonValue(), (value) => {
    const messages = jsonMessages(Buffer.from(JSON.stringify(value, null, 2)), true)
    for (const message of messages) ok(!/[\r\n]/.test(message), 'on one line')
    deepStrictEqual(messages.map(message => JSON.parse(message)), JSON.parse(JSON.stringify(Array.isArray(value) ? value : [value])))
  }), { numRuns: 100 })
  t.pass('100 values written over several lines')
})

t.test('a body is refused (400) exactly when it is not JSON', async (t) => {
  // Texts near JSON: valid ones with one character changed, dropped or doubled, and strings of JSON's characters.
  const nearJson = fc.tuple(fc.jsonValue(), fc.nat(), fc.constantFrom(...'{}[]",:0123456789.eE+-tfnul\\ \t\n/bu\u0000\u001fx'), fc.constantFrom('replace', 'drop', 'insert'))
    .map(([value, at, char, how]) => {
      const text = JSON.stringify(value)
      const index = at % (text.length + 1)
      if (how === 'drop') return text.slice(0, index) + text.slice(index + 1)
      if (how === 'insert') return text.slice(0, index) + char + text.slice(index)
      return text.slice(0, index) + char + text.slice(index + 1)
    })
  const jsonAlphabet = fc.string({ unit: fc.constantFrom(...'{}[]",:0123456789.eE+- tfrueals\\nu'), maxLength: 20 })
  fc.assert(fc.property(fc.oneof(nearJson, jsonAlphabet), (text) => {
    const result = outcome(text)
    if (text.length === 0) return deepStrictEqual(result, [])
    if (!parses(text)) return deepStrictEqual(result, { code: 'STREAMS_ERR_STREAM_REQUEST' }, JSON.stringify(text))
    ok(Array.isArray(result), JSON.stringify(text))
    const value = JSON.parse(text) as unknown
    deepStrictEqual(result.map(message => JSON.parse(message)), Array.isArray(value) ? value : [value])
  }), { numRuns: 3000 })
  t.pass('3 000 texts near JSON judged as JSON.parse judges them')
  for (const text of ['01', '1.', '.5', '1e', '-', '+1', '"\\x"', '"\\u12G4"', '"a\u0001"', '["ok","a\u0001b"]', '["a\tb"]', '["a"b"]', 'tru', 'nul', '[1,]', '{"a":1,}', '{"a"}', '{1:2}', '[1 2]', '[', '"', '1 2', '\u00a01', '\ufeff1']) {
    t.same(outcome(text), { code: 'STREAMS_ERR_STREAM_REQUEST' }, JSON.stringify(text))
  }
})

t.test('strings with escapes and without: each ends at its own closing quote', async (t) => {
  t.same(jsonMessages(Buffer.from('["a\\"b", {"c\\\\":"d"}, "e"]'), false), ['"a\\"b"', '{"c\\\\":"d"}', '"e"'])
  t.same(jsonMessages(Buffer.from('["a,b", {"c]":"d}"}, "e"]'), false), ['"a,b"', '{"c]":"d}"}', '"e"'])
})

t.test('bytes that are not UTF-8: read as U+FFFD, as any decoder reads them, and kept as UTF-8', async (t) => {
  const bytes = (...parts: Array<string | number[]>): Buffer => Buffer.concat(parts.map(part => Buffer.from(part)))
  // One bad byte (a character of its own once decoded) and a cut sequence (two bytes, one character).
  for (const [body, messages] of [
    [bytes('["a', [0xff], 'b","c"]'), ['"a\ufffdb"', '"c"']],
    [bytes('[{"c":"', [0xe6, 0x97], '"}, 1]'), ['{"c":"\ufffd"}', '1']]
  ] as const) {
    const payload = jsonPayload(body, false)
    t.ok(isUtf8(payload.lines), 'what is kept is UTF-8')
    t.same(payload.lines.toString('utf8').split('\n'), messages)
  }
  // A lone continuation byte outside a string is not JSON however it is read.
  t.same(outcome(Buffer.from([0x5b, 0x31, 0x2c, 0x80, 0x5d]).toString('latin1')), { code: 'STREAMS_ERR_STREAM_REQUEST' })
  t.throws(() => jsonPayload(Buffer.from([0x5b, 0x31, 0x2c, 0x80, 0x5d]), false), { code: 'STREAMS_ERR_STREAM_REQUEST' })
})

t.test('deep nesting: a hostile body is refused, a deep valid one accepted, neither crashes', async (t) => {
  t.same(outcome('['.repeat(100_000)), { code: 'STREAMS_ERR_STREAM_REQUEST' })
  const deep = '['.repeat(2000) + ']'.repeat(2000)
  const [message] = jsonMessages(Buffer.from(deep), false)
  t.equal(message, '['.repeat(1999) + ']'.repeat(1999))
})

t.test('an empty array appends nothing: refused unless creating', async (t) => {
  t.same(jsonMessages(Buffer.from(' [ ] '), true), [])
  t.throws(() => jsonMessages(Buffer.from('[]'), false), { code: 'STREAMS_ERR_STREAM_REQUEST' })
})

t.test('media types: parameters, case and spaces aside; a flood of distinct headers is answered all the same', async (t) => {
  t.equal(mediaType('Application/JSON; charset=utf-8'), 'application/json')
  t.equal(mediaType(' text/plain '), 'text/plain')
  for (let i = 0; i < 1000; i++) equal(mediaType(`application/x-${i}; q=1`), `application/x-${i}`)
  t.pass('1 000 distinct content types')
  t.equal(mediaType('Application/JSON; charset=utf-8'), 'application/json')
})
