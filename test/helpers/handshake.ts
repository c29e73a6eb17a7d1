// A WebSocket handshake whose outcome is read as a user would see it: the open socket, or the refusal's status and code.
import { WebSocket } from 'ws'

export type Handshake = { status: number, code?: string } | { status: 101, socket: WebSocket }

/** Opens a socket and reports how the handshake ended: 101 with the socket, or the refusal's status and code. */
export function handshake (url: string, headers: Record<string, string> = {}): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { headers })
    socket.once('open', () => resolve({ status: 101, socket }))
    socket.once('unexpected-response', (_request, response) => {
      let body = ''
      response.on('data', (chunk: Buffer) => { body += chunk.toString() })
      response.on('end', () => {
        socket.terminate()
        resolve({ status: response.statusCode ?? 0, code: body === '' ? undefined : JSON.parse(body).code })
      })
    })
    socket.once('error', (err) => { if (socket.readyState !== WebSocket.CLOSED) reject(err) })
  })
}
