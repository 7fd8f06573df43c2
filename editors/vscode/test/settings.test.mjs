// Unit tests of what the extension derives from its settings (out/settings.js, no VS Code needed).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const s = require('../out/settings.js');
const declared = JSON.parse(readFileSync(path.join(here, '..', 'package.json'), 'utf8')).contributes.configuration
    .properties;
const getter = (user) => (key) => (key in user ? user[key] : declared[`diffill.${key}`]?.default);

test('defaults: python3 -m diffill.cli serve, python on Windows', () => {
    assert.deepEqual(s.resolveServerCommand(getter({}), 'linux'), {
        command: 'python3',
        args: ['-m', 'diffill.cli', 'serve'],
        fromPython: true,
    });
    assert.equal(s.resolveServerCommand(getter({}), 'win32').command, 'python');
    assert.equal(s.resolveServerCommand(getter({ pythonPath: ' /venv/bin/python ' })).command, '/venv/bin/python');
});

test('diffill.serverCommand wins over diffill.pythonPath', () => {
    const cmd = s.resolveServerCommand(getter({ pythonPath: '/p', serverCommand: ['/venv/bin/diffill', 'serve', '--device', 'cpu'] }));
    assert.deepEqual(cmd, { command: '/venv/bin/diffill', args: ['serve', '--device', 'cpu'], fromPython: false });
});

test('auto and empty values go to the server as null; only server keys are sent', () => {
    const sent = s.buildServerSettings(getter({ pythonPath: '/p', device: 'auto', dtype: 'auto', modelPath: '' }));
    assert.equal(sent.device, null);
    assert.equal(sent.dtype, null);
    assert.equal(sent.modelPath, null);
    assert.deepEqual(Object.keys(sent).sort(), [...s.SERVER_KEYS].sort());
    const cuda = s.buildServerSettings(getter({ device: 'cuda:1', modelPath: ' /models/x ' }));
    assert.equal(cuda.device, 'cuda:1');
    assert.equal(cuda.modelPath, '/models/x');
    assert.deepEqual(s.buildInitializationOptions(getter({})), { diffill: s.buildServerSettings(getter({})) });
    assert.deepEqual(s.buildDidChangeConfigurationParams(getter({})), { settings: { diffill: s.buildServerSettings(getter({})) } });
});

test('every contributed diffill.* setting is either sent to the server or used by the extension', () => {
    const known = new Set([...s.SERVER_KEYS, ...s.CLIENT_KEYS, 'trace.server']);
    for (const key of Object.keys(declared)) {
        assert.ok(known.has(key.replace(/^diffill\./, '')), `${key} is used`);
    }
});

test('language filter: "*" all, "-id" excludes, exclusions win', () => {
    assert.equal(s.languageEnabled(['*'], 'python'), true);
    assert.equal(s.languageEnabled(['*', '-markdown'], 'markdown'), false);
    assert.equal(s.languageEnabled(['python', 'rust'], 'go'), false);
    assert.equal(s.languageEnabled(['python', '-python'], 'python'), false);
    assert.equal(s.languageEnabled(['Python'], 'python'), true);
    assert.equal(s.completionsWanted(getter({ enabled: false }), 'python'), false);
    assert.equal(s.completionsWanted(getter({}), 'plaintext'), false);
});

test('start failure advice names the fix', () => {
    const py = { command: '/venv/bin/python', args: ['-m', 'diffill.cli', 'serve'], fromPython: true };
    assert.match(s.startFailureAdvice(py, 'no-command'), /Python was not found.*diffill\.pythonPath/);
    assert.match(s.startFailureAdvice(py, 'no-package', ['diffill', 'lsp_server']), /"\/venv\/bin\/python -m pip install -e <your diffill checkout>"/);
    assert.match(s.startFailureAdvice(py, 'no-package', ['torch']), /missing dependencies \(torch\).*pip install -e <your diffill checkout>/);
    const custom = { command: 'diffill-x', args: ['serve'], fromPython: false };
    assert.match(s.startFailureAdvice(custom, 'no-command'), /diffill\.serverCommand/);
    assert.match(s.startFailureAdvice(custom, 'crashed'), /Show Server Log/);
});
