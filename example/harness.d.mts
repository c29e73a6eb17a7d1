// Types of harness.mjs for the TypeScript tests.
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { BrowserContext } from 'playwright-core'

export const EXAMPLE_DIR: string
export const CHROMIUM_PATH: string
export const CHROMIUM_ARGS: readonly string[]
export function buildBundles (): Promise<void>
export function startExample (streams: FastifyPluginAsync<any>, options?: Record<string, unknown>): Promise<{ app: FastifyInstance, base: string }>
export function openChromium (viewport?: { width: number, height: number }): Promise<{ context: BrowserContext, close: () => Promise<void> }>
