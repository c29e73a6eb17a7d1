// The feed page: one todo list read through its group feed (GET /v1/groups/todo/<user>, Durable Streams over
// SSE) with the official client, kept in a MaterializedState. It keeps the last offset it processed; after a
// lost connection it starts again from that offset and shows what changed meanwhile, without a reload.
// Bundled by esbuild into example/public/feed.js (npm run build:example).
//
// URL parameters: ?token=<token> (ana-token, bob-token). The token goes as the `authToken` query parameter,
// which example.auth reads (EventSource-style readers cannot set headers).
import { stream } from '@durable-streams/client'
import { MaterializedState } from '@durable-streams/state'

const STREAM = 'todo'
const RETRY_MS = 500
const token = new URLSearchParams(window.location.search).get('token') ?? ''
const $ = id => document.getElementById(id)

let state = new MaterializedState()
let offset = '-1'

function setState (next, message) {
  $('app').dataset.state = next
  $('status').textContent = next
  $('message').hidden = message === undefined
  if (message !== undefined) $('message').textContent = message
}

function render () {
  const items = [...state.getType(STREAM).values()]
  const list = $('list')
  list.replaceChildren(...items.map(item => {
    const li = document.createElement('li')
    li.className = item.done ? 'done' : ''
    const title = document.createElement('span')
    title.className = 'title'
    title.textContent = item.title
    li.append(title)
    return li
  }))
  $('empty').hidden = items.length > 0
  $('offset').textContent = offset
}

function take (messages) {
  for (const message of messages) {
    if (message.headers.control === 'snapshot-start') state = new MaterializedState()
    else if (message.headers.operation !== undefined && message.headers.operation !== 'event') state.apply(message)
  }
}

async function follow (user) {
  for (;;) {
    try {
      const session = await stream({
        url: `${window.location.origin}/v1/groups/${STREAM}/${encodeURIComponent(user)}`,
        offset,
        live: 'sse',
        params: { authToken: token },
        backoffOptions: { initialDelay: 100, maxDelay: 2000, multiplier: 1.5 }, // back soon after a network loss
        warnOnHttp: false
      })
      setState('live')
      session.subscribeJson(batch => {
        take(batch.items)
        offset = batch.offset
        render()
      })
      await session.closed
    } catch (err) {
      if (err.status === 410) offset = '-1' // the log cannot continue from our offset: take a new snapshot
      else if (err.status === 401 || err.status === 403) return setState('refused', 'Not allowed to read this list.')
    }
    setState('offline', 'Connection lost; resuming from the last offset…')
    await new Promise(resolve => setTimeout(resolve, RETRY_MS))
  }
}

async function main () {
  const me = await fetch('/api/me', { headers: { authorization: `Bearer ${token}` } })
  if (!me.ok) return setState('refused', 'Sign in with ?token=ana-token or ?token=bob-token.')
  const { user } = await me.json()
  $('title').textContent = `${user}'s todo (feed)`
  render()
  await follow(user)
}

main()
