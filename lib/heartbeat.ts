// Finds sockets whose peer vanished (frozen, cable pulled): on a quiet group nothing else would ever write to
// them. Every `ping_interval_ms` each socket is pinged; one that has not answered the previous ping (nor sent
// anything) by the next tick is terminated, and its close runs the leave triggers as for any other close.
import type { WebSocket } from 'ws'

export class Heartbeat {
  /** Per socket: has it been heard from since the last ping? */
  private readonly sockets = new Map<WebSocket, boolean>()
  /** Per socket: its connection's id, for the log line when it is dropped. */
  private readonly ids = new WeakMap<WebSocket, number>()
  private readonly timer: NodeJS.Timeout | null

  constructor (intervalMs: number, private readonly onMissed: (id: number | undefined) => void) {
    this.timer = intervalMs > 0 ? setInterval(() => this.tick(), intervalMs).unref() : null
  }

  watch (socket: WebSocket, id: number): void {
    if (this.timer === null) return
    this.ids.set(socket, id)
    const heard = (): void => { if (this.sockets.has(socket)) this.sockets.set(socket, true) }
    this.sockets.set(socket, true)
    socket.on('pong', heard)
    socket.on('message', heard)
    socket.once('close', () => { this.sockets.delete(socket) })
  }

  private tick (): void {
    for (const [socket, heard] of this.sockets) {
      if (!heard) {
        this.sockets.delete(socket)
        this.onMissed(this.ids.get(socket))
        socket.terminate()
        continue
      }
      this.sockets.set(socket, false)
      socket.ping()
    }
  }

  stop (): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.sockets.clear()
  }
}
