// The example list rendered by React through the stock `@motiadev/stream-client-react` hooks: `MotiaStreamProvider`
// opens the socket, `useStreamGroup` subscribes to the list and re-renders on every change. Same server, tokens and
// data as the plain page. Bundled into example/public/react.js (npm run build:example).
// Page: /app/react.html?token=ana-token (optional &user=<list owner>, default: the token's user).
import { StrictMode, useCallback, useState } from 'react'
import { createRoot } from 'react-dom/client'
import { MotiaStreamProvider, useStreamGroup } from '@motiadev/stream-client-react'

const STREAM = 'todo'
const params = new URLSearchParams(window.location.search)
const token = params.get('token')
const address = `${window.location.protocol === 'https:' ? 'wss' : 'ws'}://${window.location.host}/`
// One array for the page's lifetime: the provider reconnects whenever `protocols` changes identity.
const protocols = token === null ? undefined : ['Authorization', token]

function TodoList ({ owner }) {
  const [synced, setSynced] = useState(false)
  // Stable, or the hook would subscribe again on every render; called with every new state of the list.
  const onData = useCallback(() => setSynced(true), [])
  const { data } = useStreamGroup({ streamName: STREAM, groupId: owner, sortKey: 'createdAt', setData: onData })
  return (
    <main id='app' data-state={synced ? 'live' : 'loading'}>
      <h1 id='title'>{owner}'s todos</h1>
      {!synced && <p id='message'>Loading…</p>}
      <ul id='list'>
        {data.map(item => (
          <li key={item.id} data-id={item.id} className={item.done === true ? 'done' : undefined}>
            <span className='title'>{item.title}</span>
          </li>
        ))}
      </ul>
      {synced && data.length === 0 && <p id='empty'>Nothing to do.</p>}
      <footer>Rendered by React with <code>@motiadev/stream-client-react</code></footer>
    </main>
  )
}

async function whoAmI () {
  if (token === null) return null
  const res = await fetch('/api/me', { headers: { authorization: `Bearer ${token}` } })
  return res.ok ? (await res.json()).user : null
}

async function start () {
  const owner = params.get('user') ?? await whoAmI()
  createRoot(document.getElementById('root')).render(owner === null
    ? <main id='app' data-state='signed-out'><p id='message'>Sign in by adding ?token=ana-token to the address.</p></main>
    : (
      <StrictMode>
        <MotiaStreamProvider address={address} protocols={protocols}>
          <TodoList owner={owner} />
        </MotiaStreamProvider>
      </StrictMode>
      ))
}

start()
