/**
 * Loader hooks for module-census.ts (they run on the loader thread): report the URL of
 * every module loaded through the ES module loader back over the port.
 */
import type { MessagePort } from 'node:worker_threads';

let port: MessagePort | null = null;

export function initialize(data: { port: MessagePort }): void {
  port = data.port;
}

export async function load(url: string, context: unknown, next: (url: string, context: unknown) => Promise<unknown>): Promise<unknown> {
  port?.postMessage(url);
  return next(url, context);
}
