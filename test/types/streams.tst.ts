// Type tests (tstyche) of the built package as an app imports it: what compiles, and what must not.
// Run by test/package/types.test.ts in `npm test`, or alone: `npx tstyche` (after `npm run build`).
import Fastify from 'fastify'
import { expect, test } from 'tstyche'
import streams, {
  type AuthInput, type ChangePayload, type DataFunctionInputs, type JoinInput, type StreamsOptions, type TriggerType
} from 'fastify-streams'

interface Todo { id: string, title: string, done: boolean }

const app = Fastify()
/** Stands for the options argument of `app.register(streams, …)`. */
function options (value: StreamsOptions): StreamsOptions {
  return value
}

test('app.streams is there once the plugin is imported', () => {
  expect(app.register).type.toBeCallableWith(streams, { auth_function: 'onAuth' })
  expect(app.streams.set('todo', 'inbox', 't1', { title: 'milk' })).type.toBe<Promise<{ old_value: unknown, new_value: unknown }>>()
})

test('get<T> and getGroup<T> return what the app stored', () => {
  expect(app.streams.get<Todo>('todo', 'inbox', 't1')).type.toBe<Promise<Todo | null>>()
  expect(app.streams.getGroup<Todo>('todo', 'inbox')).type.toBe<Promise<Todo[]>>()
  expect(app.streams.get('todo', 'inbox', 't1')).type.toBe<Promise<unknown>>()
  expect(app.streams.getGroup('todo', 'inbox')).type.toBe<Promise<unknown[]>>()
})

test('trigger_type is one of the known trigger types', () => {
  expect<TriggerType>().type.toBe<'streams:join' | 'stream:join' | 'streams:leave' | 'stream:leave' | 'stream'>()
  expect(app.streams.registerTrigger).type.toBeCallableWith({ trigger_type: 'streams:join', function_path: 'onJoin' })
  expect(app.streams.registerTrigger).type.toBeCallableWith({ trigger_type: 'stream:leave', function_path: 'onLeave' })
  expect(app.streams.registerTrigger).type.toBeCallableWith({ trigger_type: 'stream', function_path: 'onChange', config: { stream_name: 'todo', group_id: 'inbox' } })
  expect(app.streams.registerTrigger).type.not.toBeCallableWith({ trigger_type: 'streams:jion', function_path: 'onJoin' })
  expect(app.streams.registerTrigger).type.not.toBeCallableWith({ trigger_type: 'stream', function_path: 'onChange' })
  expect(app.streams.registerTrigger).type.not.toBeCallableWith({ trigger_type: 'stream', function_path: 'onChange', config: { group_id: 'inbox' } })
})

test('handlers take the input of what they serve', () => {
  app.streams.registerFunction({
    function_path: 'onJoin',
    handler: ({ group_id: group, context }: JoinInput<{ user: string } | null>) => {
      expect(group).type.toBe<string>()
      expect(context).type.toBe<{ user: string } | null>()
      return group === context?.user ? {} : { unauthorized: true }
    }
  })
  app.streams.registerFunction({
    function_path: 'onAuth',
    handler: ({ headers, query_params: query }: AuthInput) => {
      expect(headers).type.toBe<Record<string, string>>()
      expect(query).type.toBe<Record<string, string[]>>()
      return { context: null }
    }
  })
  app.streams.registerFunction({
    function_path: 'onChange',
    handler: (payload: ChangePayload) => {
      expect(payload.event.type).type.toBe<'create' | 'update' | 'delete' | 'event'>()
      expect(payload.id).type.toBe<string | null>()
    }
  })
  // A data function's override gets its input typed by the path alone.
  app.streams.registerFunction({
    function_path: 'stream::set(todo)',
    handler: (input) => {
      expect(input).type.toBe<DataFunctionInputs['set']>()
      expect(input.item_id).type.toBe<string>()
    }
  })
  app.streams.registerFunction({
    function_path: 'streams.getGroup(todo)',
    handler: (input) => { expect(input).type.toBe<{ stream_name: string, group_id: string }>() }
  })
  expect(app.streams.registerFunction).type.not.toBeCallableWith({ function_path: 'x', handler: 'not a function' })
  expect(app.streams.registerFunction).type.not.toBeCallableWith({ function_path: 'stream::get(todo)', handler: (input: { nope: number }) => input })
  expect(app.streams.registerFunction).type.toBeCallableWith({ function_path: 'stream::get(todo)', handler: (input: unknown) => input })
})

test('an auth function given directly is typed', () => {
  expect(options).type.toBeCallableWith({ auth_function: async ({ headers }: AuthInput) => ({ context: headers.authorization }) })
  expect(options).type.not.toBeCallableWith({ auth_function: 42 })
  expect(options).type.not.toBeCallableWith({ auth_failure: 'ignore' })
})

test('adapter.config is typed by the adapter class', () => {
  expect(options).type.toBeCallableWith({ adapter: { class: 'modules::streams::adapters::KvStore', config: { store_method: 'file_based', file_path: './data/s.db' } } })
  expect(options).type.toBeCallableWith({ adapter: { name: 'kv', config: { storeMethod: 'in_memory' } } })
  expect(options).type.toBeCallableWith({ adapter: { class: 'modules::streams::adapters::RedisAdapter', config: { redis_url: 'redis://localhost:6379', key_prefix: 'app:' } } })
  expect(options).type.toBeCallableWith({ adapter: { class: 'my::Adapter', config: { anything: 1 } }, adapters: { 'my::Adapter': () => { throw new Error('unused') } } })
  expect(options).type.not.toBeCallableWith({ adapter: { class: 'modules::streams::adapters::KvStore', config: { store_method: 'file_base' } } })
  expect(options).type.not.toBeCallableWith({ adapter: { name: 'kv', config: { storeMethod: 'on_disk' } } })
  expect(options).type.not.toBeCallableWith({ adapter: { class: 'modules::streams::adapters::RedisAdapter', config: { redis_url: 6379 } } })
  expect(options).type.not.toBeCallableWith({ adapter: { class: 'redis', config: { connect_timeout_ms: '5s' } } })
})
