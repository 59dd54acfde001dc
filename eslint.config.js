// Lint configuration: typescript-eslint's recommended rules plus the repo's own walls.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['**/node_modules/**', '**/gen/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { process: 'readonly', console: 'readonly', Buffer: 'readonly', URL: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly' } },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      // Only libs/ggml may talk to native code (STYLE.md, habit 5).
      'no-restricted-imports': ['error', { paths: [{ name: 'koffi', message: 'koffi is imported only inside libs/ggml' }] }],
    },
  },
  {
    files: ['libs/ggml/**/*.ts'],
    rules: { 'no-restricted-imports': 'off' },
  },
);
