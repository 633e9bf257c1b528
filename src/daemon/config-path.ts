/**
 * Where matchlockd reads its config file unless `--config` names another. Its own module, so the
 * CLI can name it in its help without loading the config reader and every VMM provider.
 */
export const DEFAULT_CONFIG_PATH = '/etc/matchlock/config.yaml';
