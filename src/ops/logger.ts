/**
 * pino setup. Credentials must never reach the log: authorization headers, cookies,
 * passwords and tokens are redacted wherever they appear in logged objects.
 */
import pino, { type Logger } from 'pino';
import type { Config } from '../config/schema.js';

export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers["proxy-authorization"]',
  'req.headers.cookie',
  'headers.authorization',
  'headers["proxy-authorization"]',
  '*.authorization',
  '*.Authorization',
  '*.password',
  '*.token',
  '*.access_token',
  '*.refresh_token',
  '*.secret',
  'password',
  'token',
  'credentials',
  '*.credentials',
];

export function createLogger(config: Pick<Config, 'log'>, destination?: pino.DestinationStream): Logger {
  const opts: pino.LoggerOptions = {
    level: config.log.level,
    redact: { paths: REDACT_PATHS, censor: '[REDACTED]' },
    base: { service: 'regmirror' },
  };
  return destination ? pino(opts, destination) : pino(opts);
}
