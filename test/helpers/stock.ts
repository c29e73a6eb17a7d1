// The stock Motia clients from npm, opened the way an app opens them and closed with the test.
import { Stream as NodeStream } from '@motiadev/stream-client-node'
import { Stream as CoreStream } from '@motiadev/stream-client'
import { WebSocket } from 'ws'

export type StockKind = 'stream-client-node' | 'stream-client'
export type StockStream = NodeStream | CoreStream

interface Teardown { teardown(fn: () => void | Promise<void>): void }

/** The core client, given the same ws-based socket adapter shape its browser and node builds use. */
function coreStream (url: string): CoreStream {
  return new CoreStream(() => {
    const socket = new WebSocket(url)
    return {
      connect () {},
      send: (message: string) => socket.send(message),
      onMessage: (callback: (message: string) => void) => socket.on('message', data => callback(data.toString())),
      onOpen: (callback: () => void) => socket.on('open', callback),
      onClose: (callback: () => void) => socket.on('close', callback),
      close: () => { socket.close(); socket.removeAllListeners() },
      isOpen: () => socket.readyState === WebSocket.OPEN
    }
  })
}

/** Opens a stock client at `url` (the node client unless told), closed when `t` ends. */
export function openStock (t: Teardown, url: string, options: { kind?: StockKind, protocols?: string[] } = {}): StockStream {
  const stream = options.kind === 'stream-client'
    ? coreStream(url)
    : new NodeStream(url, options.protocols === undefined ? undefined : { protocols: options.protocols })
  t.teardown(() => stream.close())
  return stream
}
