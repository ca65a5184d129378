/** Upstream failures as the rest of the code sees them (client.ts, auth.ts, the pull-through). */

/** The upstream could not be reached (every endpoint failed at the transport level or 5xx). */
export class UpstreamUnavailableError extends Error {
  override name = 'UpstreamUnavailableError';
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

/**
 * The upstream answered, but unusably: a redirect loop, a token service that fails or
 * hands out tokens the registry then rejects. Not a reason to mark the upstream offline
 * (`status` is set); the message is safe to show to clients (no URLs, no secrets).
 */
export class UpstreamProtocolError extends UpstreamUnavailableError {
  override name = 'UpstreamProtocolError';
  constructor(message: string, status = 502) {
    super(message, status);
  }
}

export function errorSummary(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as Error & { code?: string }).code;
    return code ? `${code}: ${e.message}` : e.message;
  }
  return String(e);
}
