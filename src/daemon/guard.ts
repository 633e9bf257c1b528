import type { Logger } from '../core/ports.js';

/**
 * The daemon's last line of defence: no request, VM state or host state may end the process,
 * so a rejection nobody handled or an exception thrown from a callback is logged, with its
 * stack, and the daemon carries on. Each one is a bug to fix where it starts; this only keeps
 * the guests' daemon alive meanwhile. Returns a function that removes the guards.
 */
export function installProcessGuards(logger: Logger): () => void {
  const describe = (err: unknown) => (err instanceof Error ? { err: err.message, stack: err.stack } : { err: String(err) });
  const onRejection = (reason: unknown) => logger.error(describe(reason), 'unhandled promise rejection; carrying on');
  const onException = (err: Error, origin: string) => logger.error({ ...describe(err), origin }, 'uncaught exception; carrying on');
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);
  return () => {
    process.off('unhandledRejection', onRejection);
    process.off('uncaughtException', onException);
  };
}
