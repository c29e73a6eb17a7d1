// Timestamps for stream events: epoch milliseconds that strictly increase, so the stock clients, which drop
// an item message whose timestamp is not newer than the last, never drop a second write in one millisecond.

export class StreamClock {
  private last = 0

  /** The next timestamp: now, or one past the last issued here or in the group, whichever is later. */
  next (groupTimestamp = 0): number {
    const timestamp = Math.max(Date.now(), this.last + 1, groupTimestamp + 1)
    this.last = timestamp
    return timestamp
  }

  /** Records a timestamp issued elsewhere (a stored change, another node), so later ones come after it. */
  observe (timestamp: number): void {
    if (timestamp > this.last) this.last = timestamp
  }
}
