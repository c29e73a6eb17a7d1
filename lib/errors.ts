// Every error the plugin raises on purpose: @fastify/error classes with STREAMS_ERR_* codes.
// Callers and tests check `code`; messages are for people.
import createError from '@fastify/error'

const InvalidOption = createError<[string, string]>('STREAMS_ERR_INVALID_OPTION', 'Invalid fastify-streams option "%s": %s', 500, TypeError)
/**
 * An option or adapter config key with a bad value. `key` is the dotted path as the user spelled it
 * (`adapter.config.redis_url`), or '' for the options object itself; `reason` says what was expected.
 */
export class InvalidOptionError extends InvalidOption {
  readonly key: string
  readonly reason: string
  constructor (key: string, reason: string) {
    super(key === '' ? '(options)' : key, reason)
    this.key = key
    this.reason = reason
  }
}
export const AlreadyRegisteredError = createError('STREAMS_ERR_ALREADY_REGISTERED', 'fastify-streams is already registered on this instance', 500)
export const InvalidNameError = createError<[string, string]>('STREAMS_ERR_INVALID_NAME', 'Invalid %s: %s', 400, TypeError)
export const InvalidArgumentError = createError<[string]>('STREAMS_ERR_INVALID_ARGUMENT', 'Invalid argument: %s', 400, TypeError)
export const FunctionNotFoundError = createError<[string]>('STREAMS_ERR_FUNCTION_NOT_FOUND', 'No function registered at "%s"', 404)
export const FunctionExistsError = createError<[string]>('STREAMS_ERR_FUNCTION_EXISTS', 'A function is already registered at "%s"', 409)
export const InvalidTriggerError = createError<[string]>('STREAMS_ERR_INVALID_TRIGGER', 'Invalid trigger: %s', 400, TypeError)
export const InvalidAdapterError = createError<[string]>('STREAMS_ERR_INVALID_ADAPTER', 'Invalid adapter: %s', 500, TypeError)
export const BackendUnavailableError = createError<[string]>('STREAMS_ERR_BACKEND_UNAVAILABLE', 'Storage backend unavailable: %s', 503)
export const StorageError = createError<[string]>('STREAMS_ERR_STORAGE', 'Storage write failed: %s', 500)
export const ConflictError = createError<[string]>('STREAMS_ERR_CONFLICT', 'Concurrent update did not settle: %s', 409)
export const AuthTimeoutError = createError<[number]>('STREAMS_ERR_AUTH_TIMEOUT', 'The auth function did not answer within %d ms', 503)
export const ClosedError = createError('STREAMS_ERR_CLOSED', 'fastify-streams is closed', 503)
export const ConfigError = createError<[string, string, string]>('STREAMS_ERR_CONFIG', '%s: %s: %s', 500)
export const InvalidOverrideResultError = createError<[string, string]>('STREAMS_ERR_INVALID_OVERRIDE_RESULT', 'The override at "%s" returned %s', 500, TypeError)
export const WsInternalsError = createError<[string]>('STREAMS_ERR_WS_INTERNALS', 'Unsupported ws or Node version: %s (see the ws range in package.json)', 500)
export const MissingPackageError = createError<[string, string]>('STREAMS_ERR_MISSING_PACKAGE', 'The package "%s" is needed for %s: install it with npm install', 500)
// Group feeds (lib/http/feeds.ts): what a refused feed request answers, as `{ code, message }`.
export const ForbiddenError = createError('STREAMS_ERR_FORBIDDEN', 'Not allowed', 403)
export const FeedRequestError = createError<[string]>('STREAMS_ERR_FEED_REQUEST', 'Invalid feed request: %s', 400)
export const OffsetGoneError = createError('STREAMS_ERR_OFFSET_GONE', 'The offset is no longer in the log (trimmed, or from another epoch of the store): read again from offset -1', 410)
export const FeedMethodError = createError('STREAMS_ERR_METHOD_NOT_ALLOWED', 'Feeds are read-only (GET, HEAD)', 405)
export const FeedBusyError = createError('STREAMS_ERR_FEED_BUSY', 'Too many live feed readers, retry later', 503)

// Durable Streams protocol refusals: each carries the HTTP status the protocol gives it.
export const StreamRequestError = createError<[string]>('STREAMS_ERR_STREAM_REQUEST', 'Bad request: %s', 400)
export const StreamNotFoundError = createError('STREAMS_ERR_STREAM_NOT_FOUND', 'Stream not found', 404)
export const StreamGoneError = createError('STREAMS_ERR_STREAM_GONE', 'Stream is deleted or expired but its forks still read it', 410)
export const StreamConflictError = createError<[string]>('STREAMS_ERR_STREAM_CONFLICT', 'Conflict: %s', 409)
export const StreamClosedError = createError('STREAMS_ERR_STREAM_CLOSED', 'Stream is closed', 409)
export const StreamSeqError = createError<[string, string]>('STREAMS_ERR_STREAM_SEQ', 'Stream-Seq "%s" is not after the last one ("%s")', 409)
export const ProducerFencedError = createError<[number, number]>('STREAMS_ERR_PRODUCER_FENCED', 'Producer epoch %d is older than the current epoch %d', 403)
export const ProducerSeqGapError = createError<[number, number]>('STREAMS_ERR_PRODUCER_SEQ_GAP', 'Producer-Seq %d received, %d expected', 409)
export const PayloadTooLargeError = createError<[number]>('STREAMS_ERR_PAYLOAD_TOO_LARGE', 'Body is larger than %d bytes', 413)
export const UnauthorizedError = createError('STREAMS_ERR_UNAUTHORIZED', 'Authentication failed', 401)
export const TooManyReadersError = createError<[number]>('STREAMS_ERR_TOO_MANY_READERS', 'Already %d live readers', 503)
