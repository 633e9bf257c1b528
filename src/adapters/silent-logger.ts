import type { Logger } from '../core/ports.js';

/** A logger that drops everything, for one-shot tools that report through their own output. */
export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
  child() {
    return silentLogger;
  },
};
