/**
 * Which metadata keys the cloud-init seed can hold. Each key becomes a file in the root of the
 * seed's FAT filesystem (VFAT long names), so a key must be a name FAT keeps exactly as given,
 * and no two keys may be one name to FAT.
 *
 * Rules (Microsoft's FAT specification, long names, and its "Naming Files, Paths, and
 * Namespaces"; mtools, which the tests read the seed back with, refuses or rewrites such names):
 * - at most 255 UTF-16 code units;
 * - none of `" * / : < > ? \ |` nor control characters;
 * - no trailing dot or space: FAT drops them, so the guest would find another name;
 * - not a DOS device name (CON, PRN, AUX, NUL, COM0-9, LPT0-9), with or without an extension;
 * - names are compared without case, so `user-data` and `user-DATA` are one file.
 */

export const FAT_NAME_MAX = 255;

/** The files the seed may hold besides the client's keys (meta-data is always written). */
export const SEED_FILES = ['meta-data', 'user-data', 'vendor-data', 'network-config'] as const;

const RESERVED = /^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$/i;
// eslint-disable-next-line no-control-regex
const FORBIDDEN = /["*/:<>?\\|\u0000-\u001f\u007f]/;

/** Why FAT cannot hold `name` as a file of that exact name, or undefined when it can. */
export function fatNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'must not be empty';
  if (name.length > FAT_NAME_MAX) return `must be at most ${FAT_NAME_MAX} characters (the FAT long-name limit)`;
  if (FORBIDDEN.test(name)) return 'must not contain control characters or any of " * / : < > ? \\ | (FAT forbids them in names)';
  if (/[. ]$/.test(name)) return 'must not end with a dot or a space: the seed\'s FAT filesystem drops them, so the guest would see another name';
  if (RESERVED.test(name)) return 'must not be a DOS device name (CON, PRN, AUX, NUL, COM0-9, LPT0-9, with or without an extension): FAT cannot hold it';
  return undefined;
}

/** The one name FAT sees for `name` (it compares names without case). */
export function fatFold(name: string): string {
  return name.toUpperCase();
}
