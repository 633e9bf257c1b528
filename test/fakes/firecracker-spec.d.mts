// Types for firecracker-spec.mjs, the stand-in's rule set, so TypeScript tests can use it.
export const FC_VERSION: string;
export function swaggerPath(version?: string): string;
export function swaggerAvailable(version?: string): boolean;
export function loadDefinitions(version?: string): { names: string[]; check(name: string, value: unknown, path?: string): string | undefined };
export const CONFIG_KEYS: Record<string, string>;
export const CONFIG_ARRAYS: Record<string, string>;
export function configShapeError(config: unknown): string | undefined;
export function configRuleError(config: unknown, opts?: { linkKind?: (name: string) => string | undefined; resolve?: (path: string) => string }): string | undefined;
export function buildError(config: unknown, resolve?: (path: string) => string): string | undefined;
export function isX86Elf(path: string): boolean;
export function linkKind(name: string): string | undefined;
export const CMDLINE_MAX_SIZE: number;
