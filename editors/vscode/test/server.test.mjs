// The extension's side of the protocol against the real `diffill serve`: the same command line,
// initializationOptions, workspace/configuration answers and didChangeConfiguration params as the
// extension (imported from out/settings.js, the compiled extension code), over stdio with
// vscode-languageserver-protocol. Run `npm run compile` first.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
    ConfigurationRequest,
    createProtocolConnection,
    DidChangeConfigurationNotification,
    DidChangeTextDocumentNotification,
    DidOpenTextDocumentNotification,
    ExecuteCommandRequest,
    ExitNotification,
    InitializedNotification,
    InitializeRequest,
    InlineCompletionRequest,
    InlineCompletionTriggerKind,
    LogMessageNotification,
    ShowMessageNotification,
    ShutdownRequest,
    StreamMessageReader,
    StreamMessageWriter,
    WorkDoneProgress,
    WorkDoneProgressCreateRequest,
} from 'vscode-languageserver-protocol/node';
import { prepareModel, python, serverEnv } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const settings = require('../out/settings.js');
const manifest = JSON.parse(readFileSync(path.join(here, '..', 'package.json'), 'utf8'));
const declared = manifest.contributes.configuration.properties;

/**
 * A `diffill.*` reader like `workspace.getConfiguration('diffill').get(key)`: the user's value
 * when set, else the default declared in package.json.
 */
function settingGetter(user) {
    return (key) => (key in user ? user[key] : declared[`diffill.${key}`]?.default);
}

let user;
const get = (key) => settingGetter(user)(key);
let proc;
let conn;
let stderr = '';
let initResult;
const messages = [];
const statuses = [];
const progress = [];
const uri = 'file:///tmp/diffill-node-test/hello.py';
const text = 'import os\n\n\ndef add(a, b):\n    return a + b\n\n\ndef main():\n    total = add(1, 2)\n    print(total)\n';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
        if (fn()) {
            return;
        }
        await sleep(50);
    }
    throw new Error(`timed out waiting for ${what}\nserver stderr:\n${stderr.slice(-3000)}`);
}

function inline(line, character, triggerKind = InlineCompletionTriggerKind.Invoked) {
    return conn.sendRequest(InlineCompletionRequest.type, {
        textDocument: { uri },
        position: { line, character },
        context: { triggerKind },
    });
}

before(async () => {
    user = { pythonPath: python, modelPath: prepareModel(), device: 'cpu', maxTokens: 24, quality: 0.3 };
    const cmd = settings.resolveServerCommand(get);
    assert.equal(cmd.command, python);
    assert.deepEqual(cmd.args, ['-m', 'diffill.cli', 'serve']);
    // vscode-languageclient adds these two for a stdio server.
    proc = spawn(cmd.command, [...cmd.args, '--stdio', `--clientProcessId=${process.pid}`], {
        env: serverEnv(),
        stdio: ['pipe', 'pipe', 'pipe'],
    });
    proc.stderr.on('data', (d) => (stderr += d));
    conn = createProtocolConnection(new StreamMessageReader(proc.stdout), new StreamMessageWriter(proc.stdin));
    conn.onNotification(ShowMessageNotification.type, (p) => messages.push(p));
    conn.onNotification(LogMessageNotification.type, () => undefined);
    conn.onNotification('diffill/status', (p) => statuses.push(p));
    conn.onRequest(WorkDoneProgressCreateRequest.type, () => null);
    conn.onProgress(WorkDoneProgress.type, 'diffill-load-1', (p) => progress.push(p));
    // The extension's middleware answers the server's pull with the same builder.
    conn.onRequest(ConfigurationRequest.type, (params) =>
        params.items.map((item) => (item.section === settings.SECTION ? settings.buildServerSettings(get) : null)),
    );
    conn.listen();

    const result = (initResult = await conn.sendRequest(InitializeRequest.type, {
        processId: process.pid,
        clientInfo: { name: 'Visual Studio Code', version: '1.100.3' },
        rootUri: null,
        workspaceFolders: null,
        capabilities: {
            general: { positionEncodings: ['utf-16'] },
            textDocument: {
                synchronization: { dynamicRegistration: true },
                inlineCompletion: { dynamicRegistration: true },
            },
            workspace: { configuration: true, didChangeConfiguration: { dynamicRegistration: true } },
            window: { workDoneProgress: true, showMessage: {} },
        },
        initializationOptions: settings.buildInitializationOptions(get),
    }));
    assert.ok(result.capabilities.inlineCompletionProvider, 'the server advertises inline completion');
    await conn.sendNotification(InitializedNotification.type, {});
    await conn.sendNotification(DidOpenTextDocumentNotification.type, {
        textDocument: { uri, languageId: 'python', version: 1, text },
    });
    await until('the model to load (diffill/status ready)', () => statuses.some((s) => s.state === 'ready'), 180000);
});

after(async () => {
    if (proc && proc.exitCode === null) {
        proc.kill('SIGKILL');
    }
});

test('the server accepts every setting the extension sends', async () => {
    const warnings = messages.filter((m) => /settings/i.test(m.message));
    assert.deepEqual(warnings, [], 'no "ignored invalid settings" message');
    const stats = await conn.sendRequest('diffill/stats', null);
    // Same keys as the server's schema, and the values the extension sent.
    assert.deepEqual(Object.keys(stats.settings).sort(), [...settings.SERVER_KEYS].sort());
    const sent = settings.buildServerSettings(get);
    for (const key of settings.SERVER_KEYS) {
        assert.deepEqual(stats.settings[key], sent[key], `setting ${key}`);
    }
    // Every server key is a contributed `diffill.*` setting with a default.
    for (const key of settings.SERVER_KEYS) {
        assert.ok(`diffill.${key}` in declared, `package.json declares diffill.${key}`);
    }
});

test('a client with inline completion gets ghost text only, no completion-list duplicate', () => {
    assert.equal(get('completionProvider'), 'auto');
    assert.ok(initResult.capabilities.inlineCompletionProvider);
    assert.equal(initResult.capabilities.completionProvider ?? null, null);
});

test('model loading is reported with $/progress and diffill/status', () => {
    assert.deepEqual(
        statuses.map((s) => s.state),
        ['loading', 'ready'],
    );
    assert.equal(progress[0]?.kind, 'begin');
    assert.equal(progress.at(-1)?.kind, 'end');
});

test('an inline completion is a non-empty insertion at the cursor', async () => {
    // End of "    total = add(1, 2)" (line 8).
    const line = 8;
    const character = '    total = add(1, 2)'.length;
    const result = await inline(line, character);
    const items = Array.isArray(result) ? result : result.items;
    assert.equal(items.length, 1, `one suggestion (stderr: ${stderr.slice(-1000)})`);
    const [item] = items;
    assert.equal(typeof item.insertText, 'string');
    assert.notEqual(item.insertText.trim(), '');
    assert.deepEqual(item.range, { start: { line, character }, end: { line, character } });

    // VS Code runs the item's command on accept; the client routes it to the server, which
    // advertises it, and the server counts the accept (for the local statistics).
    assert.equal(item.command?.command, 'diffill.accepted');
    assert.ok(initResult.capabilities.executeCommandProvider.commands.includes('diffill.accepted'));
    const before = (await conn.sendRequest('diffill/stats', null)).accepted;
    await conn.sendRequest(ExecuteCommandRequest.type, { command: item.command.command, arguments: item.command.arguments });
    assert.equal((await conn.sendRequest('diffill/stats', null)).accepted, before + 1);
});

test('didChangeConfiguration applies live: enabled=false stops suggestions, true brings them back', async () => {
    // Type a character first so neither answer can come from the previous one.
    await conn.sendNotification(DidChangeTextDocumentNotification.type, {
        textDocument: { uri, version: 2 },
        contentChanges: [{ range: { start: { line: 9, character: 16 }, end: { line: 9, character: 16 } }, text: '\n    ' }],
    });
    user = { ...user, enabled: false };
    await conn.sendNotification(DidChangeConfigurationNotification.type, settings.buildDidChangeConfigurationParams(get));
    const off = await inline(10, 4);
    assert.deepEqual(off.items ?? off, []);

    user = { ...user, enabled: true };
    await conn.sendNotification(DidChangeConfigurationNotification.type, settings.buildDidChangeConfigurationParams(get));
    const on = await inline(10, 4);
    const items = on.items ?? on;
    assert.equal(items.length, 1);
    assert.notEqual(items[0].insertText.trim(), '');
});

test('the language filter the extension applies matches the server', () => {
    const langs = get('languages');
    assert.equal(settings.languageEnabled(langs, 'python'), true);
    assert.equal(settings.languageEnabled(langs, 'markdown'), false);
    assert.equal(settings.completionsWanted(get, 'python'), true);
});

test('shutdown and exit end the server cleanly', async () => {
    await conn.sendRequest(ShutdownRequest.type);
    const exited = new Promise((r) => proc.once('exit', (code) => r(code)));
    await conn.sendNotification(ExitNotification.type);
    assert.equal(await exited, 0);
    conn.dispose();
});
