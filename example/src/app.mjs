// The example page: subscribes to one todo list with the stock browser client and renders it live.
// Bundled by esbuild into example/public/bundle.js (npm run build:example).
//
// URL parameters: ?token=<token> (ana-token, bob-token), optional &user=<list owner> (default: the token's user).
// The token goes to the server as the `Authorization` subprotocol, the Motia convention.
import { Stream } from '@motiadev/stream-client-browser'

const STREAM = 'todo'
const params = new URLSearchParams(window.location.search)
const token = params.get('token')
const $ = id => document.getElementById(id)
const main = $('app')
const statusEl = $('status')
const messageEl = $('message')
const listEl = $('list')
const emptyEl = $('empty')
const form = $('add')
const input = $('new-title')

let viewer = null // the token's user, or null for an anonymous visitor
let owner = null // whose list this page shows
let state = 'loading' // loading | live | refused | signed-out

function setState (next, message) {
  state = next
  main.dataset.state = next
  messageEl.hidden = message === undefined
  if (message !== undefined) messageEl.textContent = message
  form.hidden = !(next === 'live' && viewer !== null && viewer === owner)
  if (next !== 'live') render([])
}

const STATUS_TEXT = { connecting: 'connecting…', open: 'live', closed: 'offline, reconnecting…', idle: 'not connected' }
function setStatus (next) {
  statusEl.dataset.state = next
  statusEl.textContent = STATUS_TEXT[next]
}

function render (items) {
  if (state !== 'live') items = []
  listEl.replaceChildren(...items.map(item => {
    const li = document.createElement('li')
    li.dataset.id = item.id
    li.classList.toggle('done', item.done === true)
    const done = document.createElement('input')
    done.type = 'checkbox'
    done.checked = item.done === true
    done.title = 'done'
    done.disabled = viewer !== owner
    done.addEventListener('change', () => call('PATCH', `/api/todos/${owner}/${item.id}`, { done: done.checked }))
    const title = document.createElement('span')
    title.className = 'title'
    title.textContent = item.title
    const remove = document.createElement('button')
    remove.type = 'button'
    remove.textContent = 'delete'
    remove.hidden = viewer !== owner
    remove.addEventListener('click', () => call('DELETE', `/api/todos/${owner}/${item.id}`))
    li.append(done, title, remove)
    return li
  }))
  emptyEl.hidden = !(state === 'live' && items.length === 0)
}

async function call (method, path, body) {
  const headers = { authorization: `Bearer ${token}` }
  if (body !== undefined) headers['content-type'] = 'application/json'
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
  if (!res.ok) {
    const detail = await res.json().catch(() => ({}))
    messageEl.hidden = false
    messageEl.textContent = `${method} failed: ${res.status} ${detail.message ?? ''}`
  }
  return res
}

/** The stock client with hooks on each socket it creates: connection status and the frames it ignores. */
class WatchedStream extends Stream {
  createSocket () {
    const socket = super.createSocket()
    setStatus('connecting')
    socket.onOpen(() => setStatus('open'))
    socket.onClose(() => setStatus('closed'))
    socket.onMessage(raw => watch(raw))
    return socket
  }
}

let answered = false
function watch (raw) {
  let message
  try {
    message = JSON.parse(raw)
  } catch {
    return
  }
  if (message.streamName !== STREAM || message.groupId !== owner || message.id) return
  const type = message.event?.type
  if (type === 'sync') {
    answered = true
    if (state !== 'live') setState('live')
    render(subscription.getState())
  } else if (type === 'unauthorized') {
    // The stock client ignores this envelope; the page shows it.
    answered = true
    const who = viewer === null ? 'an anonymous visitor' : viewer
    setState('refused', `Not allowed: the server refused to let ${who} subscribe to ${owner}'s list.`)
  }
}

let subscription = null

async function start () {
  if (token !== null) {
    const res = await fetch('/api/me', { headers: { authorization: `Bearer ${token}` } })
    if (res.ok) viewer = (await res.json()).user
  }
  owner = params.get('user') ?? viewer
  if (owner === null) {
    setStatus('idle')
    $('title').textContent = 'Todo'
    setState('signed-out', token === null
      ? 'Sign in by adding ?token=ana-token (or bob-token) to the address.'
      : 'Unknown token: try ?token=ana-token or ?token=bob-token.')
    return
  }
  $('title').textContent = viewer === owner ? `${owner}'s todos` : `${owner}'s todos (as ${viewer ?? 'anonymous'})`
  setState('loading', 'Loading…')

  const url = `${window.location.protocol === 'https:' ? 'wss' : 'ws'}://${window.location.host}/`
  const stream = new WatchedStream(url, token === null ? undefined : { protocols: ['Authorization', token] })
  subscription = stream.subscribeGroup(STREAM, owner, 'createdAt')
  subscription.addChangeListener(items => render(items))
  window.todo = { stream, subscription }

  // A server that neither syncs nor refuses (e.g. an older one without the unauthorized envelope).
  setTimeout(() => {
    if (!answered && state === 'loading') setState('refused', `No answer from the server for ${owner}'s list: not allowed, or not reachable.`)
  }, 8000)
}

form.addEventListener('submit', async event => {
  event.preventDefault()
  const title = input.value.trim()
  if (title === '') return
  const res = await call('POST', `/api/todos/${owner}`, { title })
  if (res.ok) input.value = ''
})

start().catch(err => setState('refused', `Error: ${err.message}`))
