import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
    { ignores: ['out/**', 'node_modules/**', '*.vsix', '.test-work/**'] },
    js.configs.recommended,
    {
        files: ['src/**/*.ts'],
        extends: [...tseslint.configs.strictTypeChecked],
        languageOptions: {
            parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
        },
        rules: {
            '@typescript-eslint/restrict-template-expressions': ['error', { allowNumber: true }],
            '@typescript-eslint/no-unnecessary-condition': 'off',
            eqeqeq: 'error',
            curly: 'error',
        },
    },
    {
        files: ['**/*.mjs', '**/*.js'],
        languageOptions: { globals: { ...globals.node }, sourceType: 'module' },
        rules: { eqeqeq: 'error', curly: 'error' },
    },
);
