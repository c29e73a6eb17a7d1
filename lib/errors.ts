// Every error the plugin raises on purpose: @fastify/error classes with STREAMS_ERR_* codes.
// Callers and tests check `code`; messages are for people.
import createError from '@fastify/error'

export const InvalidOptionError = createError<[string, string]>('STREAMS_ERR_INVALID_OPTION', 'Invalid fastify-streams option "%s": %s', 500, TypeError)
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
