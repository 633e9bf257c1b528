import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['node_modules/**', 'src/gen/**', '.ci/**', 'dist/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-console': 'error',
    },
  },
  // Layering: imports may only point down (core <- adapters <- daemon/cli/host/hub). Each
  // block names what its folder must not import; test/eslint-layering.test.ts shows each firing.
  {
    // The core is the domain: no I/O, and nothing of the project outside core.
    files: ['src/core/**/*.ts'],
    ignores: ['src/core/**/*.test.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [
        { group: ['node:fs', 'node:fs/*', 'node:net', 'node:child_process', 'node:http', 'node:https', 'node:dgram', 'fs', 'fs/*', 'net', 'child_process'], message: 'src/core does no I/O: take a port from src/core/ports.ts instead.' },
        { group: ['**/adapters/**', '**/daemon/**', '**/cli/**', '**/host/**', '**/hub/**', '**/test/**'], message: 'src/core imports nothing outside src/core.' },
      ] }],
    },
  },
  {
    files: ['src/adapters/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [
        { group: ['**/daemon/**', '**/cli/**', '**/host/**', '**/hub/**'], message: 'adapters implement core ports; they never import daemon, cli, host or hub.' },
      ] }],
    },
  },
  {
    files: ['src/host/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [
        { group: ['**/cli/**'], message: 'src/host never imports the CLI; shared code belongs in src/adapters or src/core.' },
      ] }],
    },
  },
  {
    files: ['bin/**/*.js', 'test/**/*.mjs'],
    languageOptions: { globals: { process: 'readonly' } },
  },
);
