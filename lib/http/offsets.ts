// Feed offsets: opaque to readers, made of the group's revision and the store's epoch. The revision comes first,
// zero-padded, so offsets of one epoch sort lexicographically in revision order; the epoch part tells an offset
// from another life of the store (a restarted memory store, a wiped Redis), which is answered 410.
import { createHash } from 'node:crypto'

/** Digits of the revision part: every safe integer fits. */
const REV_DIGITS = 16
/** An epoch made only of these characters (what the adapters make: hex) is used as is; any other is hashed. */
const PLAIN_EPOCH = /^[A-Za-z0-9-]{1,64}$/
const OFFSET = /^(\d{16})_([A-Za-z0-9-]{1,64})$/

export interface ParsedOffset {
  rev: number
  /** The epoch as offsets carry it (see epochToken). */
  epoch: string
}

let lastEpoch = ''
let lastToken = ''

/** The epoch as it appears in offsets: URL-safe, free of the protocol's reserved characters, at most 64 long. */
export function epochToken (epoch: string): string {
  if (epoch === lastEpoch) return lastToken
  const token = PLAIN_EPOCH.test(epoch) ? epoch : createHash('sha256').update(epoch).digest('hex').slice(0, 32)
  lastEpoch = epoch
  lastToken = token
  return token
}

/** The offset of the position right after revision `rev` (what a reader holds once it has `rev`). */
export function encodeOffset (token: string, rev: number): string {
  return `${String(rev).padStart(REV_DIGITS, '0')}_${token}`
}

/** The revision and epoch token of an offset, or null when it is not one this server makes. */
export function parseOffset (text: string): ParsedOffset | null {
  const match = OFFSET.exec(text)
  if (match === null) return null
  const rev = Number(match[1])
  if (!Number.isSafeInteger(rev)) return null
  return { rev, epoch: match[2] }
}
