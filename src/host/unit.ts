/**
 * One argument of a systemd command line (ExecStart= and the like) that systemd reads back as
 * exactly `arg`: `%` doubled (systemd.unit(5), "Specifiers": `%%` is a literal percent sign), `$`
 * doubled unless it is the `executable` (systemd.service(5), "Command lines": `$$` is a literal
 * dollar sign, `${FOO}` would be substituted), and a word holding whitespace, quotes, a backslash or a lone `;` (the command
 * separator), or an empty one, double-quoted with `\"` and `\\` escaped (C-style escapes, as
 * systemd.service(5) describes). Throws Error for a control character, which a unit line cannot
 * carry as written, and for an `executable` holding `"`, `'` or `\`, which systemd refuses.
 */
export function systemdWord(arg: string, executable = false): string {
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(arg)) throw new Error(`${JSON.stringify(arg)}: a systemd unit cannot name a path with a control character`);
  // systemd's config_parse_exec refuses an executable that is not string_is_safe(): a quote or a
  // backslash in it is "Executable name contains special characters", a fatal unit error.
  if (executable && /["'\\]/.test(arg)) throw new Error(`${JSON.stringify(arg)}: systemd refuses an executable whose path holds a quote or a backslash ("Executable name contains special characters")`);
  const w = executable ? arg.replaceAll('%', '%%') : arg.replaceAll('%', '%%').replaceAll('$', '$$$$');
  return w === '' || w === ';' || /[\s"'\\]/.test(w) ? `"${w.replace(/[\\"]/g, (c) => `\\${c}`)}"` : w;
}

/**
 * A command line for ExecStart= and the like: each argument as systemdWord writes it. The
 * executable (the first) is taken literally apart from specifiers: environment variables are
 * substituted in the arguments only, so its `$` stays single (as systemd-analyze verify reads it).
 */
export function systemdCommandLine(argv: readonly string[]): string {
  return argv.map((a, i) => systemdWord(a, i === 0)).join(' ');
}
