// End-to-end test in a real VS Code: code-server (VS Code in the browser) driven by headless Chromium
// through playwright-core. Installs the packaged .vsix, opens a Python file, types, waits for the
// ghost text that the real `diffill serve` suggests, accepts it with Tab, saves, and checks the
// file on disk. Then points `diffill.pythonPath` at a missing interpreter and checks the
// notification that tells the user how to fix it.
//
// Needs (the CI script editors/ci.sh installs them):
//   CODE_SERVER   path to code-server's entry (default: code-server on PATH)
//   CHROMIUM      Chromium executable (default /usr/bin/chromium)
//   DIFFILL_VSIX  the packaged extension (default ../diffill.vsix, made by `npm run package`)
//   DIFFILL_PYTHON, DIFFILL_TEST_MODEL, DIFFILL_REPO: see test/helpers.mjs
//   DIFFILL_E2E_KEEP=1        keep the scratch folder (VS Code logs, settings) under .test-work/
//   DIFFILL_E2E_SCREENSHOT    a .png path: screenshots at the end and on failures
// A missing piece fails the test: it never skips.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { prepareModel, python, repoRoot, scratchDir, serverEnv } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const extensionDir = path.resolve(here, '..');
const vsix = process.env.DIFFILL_VSIX ?? path.join(extensionDir, 'diffill.vsix');
const codeServer = process.env.CODE_SERVER ?? 'code-server';
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** The file before the test, and what the user types at its end: one line without brackets or
 * quotes, so neither auto-indent nor auto-closing can change it. */
const INITIAL = 'def add(a, b):\n    return a + b\n\n\n';
const TYPED = process.env.DIFFILL_E2E_TYPED ?? 'result = add';

function freePort() {
    return new Promise((resolve, reject) => {
        const srv = createServer();
        srv.unref();
        srv.on('error', reject);
        srv.listen(0, '127.0.0.1', () => {
            const { port } = srv.address();
            srv.close(() => resolve(port));
        });
    });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, fn, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    let last;
    while (Date.now() < deadline) {
        try {
            last = await fn();
            if (last) {
                return last;
            }
        } catch (error) {
            last = error;
        }
        await sleep(250);
    }
    throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${String(last)})`);
}

const work = scratchDir('e2e');
const dirs = {
    config: path.join(work, 'config.yaml'),
    extensions: path.join(work, 'extensions'),
    userData: path.join(work, 'user-data'),
    workspace: path.join(work, 'workspace'),
    xdg: path.join(work, 'xdg'),
};
let codeServerProc;
let codeServerLog = '';
let browser;
let page;
let port;
const consoleLines = [];

function userSettings(extra = {}) {
    return {
        'workbench.startupEditor': 'none',
        'telemetry.telemetryLevel': 'off',
        'update.mode': 'none',
        'extensions.autoUpdate': false,
        'extensions.autoCheckUpdates': false,
        'security.workspace.trust.enabled': false,
        'editor.inlineSuggest.enabled': true,
        'editor.quickSuggestions': { other: false, comments: false, strings: false },
        'editor.suggestOnTriggerCharacters': false,
        'editor.acceptSuggestionOnEnter': 'off',
        'workbench.tips.enabled': false,
        'files.autoSave': 'off',
        'git.enabled': false,
        'diffill.pythonPath': python,
        'diffill.modelPath': prepareModel(),
        'diffill.device': 'cpu',
        'diffill.maxLines': 1,
        'diffill.trace.server': 'messages',
        ...extra,
    };
}

function writeUserSettings(settings) {
    const dir = path.join(dirs.userData, 'User');
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, 'settings.json'), JSON.stringify(settings, null, 2));
}

function codeServerEnv() {
    return {
        ...serverEnv(),
        XDG_CONFIG_HOME: path.join(dirs.xdg, 'config'),
        XDG_DATA_HOME: path.join(dirs.xdg, 'data'),
        XDG_CACHE_HOME: path.join(dirs.xdg, 'cache'),
    };
}

function codeServerArgs() {
    return ['--config', dirs.config, '--extensions-dir', dirs.extensions, '--user-data-dir', dirs.userData];
}

async function startCodeServer() {
    port = await freePort();
    codeServerProc = spawn(
        codeServer,
        [
            ...codeServerArgs(),
            '--auth',
            'none',
            '--bind-addr',
            `127.0.0.1:${port}`,
            '--disable-telemetry',
            '--disable-update-check',
            '--disable-workspace-trust',
            '--disable-getting-started-override',
            dirs.workspace,
        ],
        { env: codeServerEnv(), stdio: ['ignore', 'pipe', 'pipe'] },
    );
    codeServerProc.stdout.on('data', (d) => (codeServerLog += d));
    codeServerProc.stderr.on('data', (d) => (codeServerLog += d));
    await waitFor(
        'code-server /healthz',
        async () => (await fetch(`http://127.0.0.1:${port}/healthz`)).ok,
        60000,
    ).catch((error) => {
        throw new Error(`${error.message}\ncode-server output:\n${codeServerLog}`);
    });
}

async function stopCodeServer() {
    if (codeServerProc && codeServerProc.exitCode === null) {
        const exited = new Promise((r) => codeServerProc.once('exit', r));
        codeServerProc.kill('SIGTERM');
        await Promise.race([exited, sleep(8000)]);
        if (codeServerProc.exitCode === null) {
            codeServerProc.kill('SIGKILL');
        }
    }
    codeServerProc = undefined;
}

before(async () => {
    assert.ok(existsSync(vsix), `no packaged extension at ${vsix}: run "npm run package" first`);
    assert.ok(existsSync(chromiumPath), `Chromium not found at ${chromiumPath} (apt-get install chromium)`);
    for (const d of [dirs.extensions, dirs.userData, dirs.workspace, dirs.xdg]) {
        mkdirSync(d, { recursive: true });
    }
    writeFileSync(dirs.config, 'auth: none\ncert: false\n');
    writeFileSync(path.join(dirs.workspace, 'hello.py'), INITIAL);
    writeFileSync(path.join(dirs.workspace, 'partial.py'), INITIAL);
    writeFileSync(path.join(dirs.workspace, 'toggle.py'), INITIAL);
    writeUserSettings(userSettings());

    const install = spawnSync(codeServer, [...codeServerArgs(), '--install-extension', vsix], {
        env: codeServerEnv(),
        encoding: 'utf8',
        timeout: 120000,
    });
    assert.equal(
        install.status,
        0,
        `code-server --install-extension failed (${String(install.error ?? '')}):\n${install.stdout}\n${install.stderr}`,
    );
    assert.match(install.stdout + install.stderr, /successfully installed/i);
    assert.ok(
        readdirSync(dirs.extensions).some((d) => d.startsWith('diffill.diffill-')),
        `the extension is not in ${dirs.extensions}`,
    );

    await startCodeServer();

    browser = await chromium.launch({
        executablePath: chromiumPath,
        headless: true,
        args: [
            '--no-sandbox',
            '--disable-gpu',
            '--disable-dev-shm-usage',
            '--disable-background-networking',
            '--disable-component-update',
            '--disable-sync',
            '--no-first-run',
        ],
    });
    page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.on('console', (msg) => consoleLines.push(msg.text()));
});

after(async () => {
    if (page && process.env.DIFFILL_E2E_SCREENSHOT) {
        await page.screenshot({ path: process.env.DIFFILL_E2E_SCREENSHOT }).catch(() => undefined);
    }
    await browser?.close().catch(() => undefined);
    await stopCodeServer();
    if (!process.env.DIFFILL_E2E_KEEP) {
        rmSync(work, { recursive: true, force: true });
    }
});

/** The Diffill status bar item's accessible label, e.g. "Diffill ready 412 ms". */
async function statusLabel() {
    const item = page.locator('#diffill\\.diffill\\.diffill\\.status, [id="diffill.diffill.diffill.status"]').first();
    if ((await item.count()) === 0) {
        return '';
    }
    return (await item.getAttribute('aria-label')) ?? (await item.textContent()) ?? '';
}

/** The suggestion VS Code draws after the cursor (single-line ghost text). */
async function ghostText() {
    return page.evaluate(() => {
        const parts = [...globalThis.document.querySelectorAll('.monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text-decoration-preview')];
        return parts.map((el) => el.textContent ?? '').join('').replace(/\u00a0/g, ' ');
    });
}

async function diagnostics() {
    let shot = '';
    if (page && process.env.DIFFILL_E2E_SCREENSHOT) {
        shot = process.env.DIFFILL_E2E_SCREENSHOT.replace(/\.png$/, `-${Date.now()}.png`);
        await page.screenshot({ path: shot }).catch(() => undefined);
    }
    return `\nstatus bar: ${await statusLabel().catch(() => '?')}; screenshot: ${shot || '(set DIFFILL_E2E_SCREENSHOT)'}` + `\n--- page console (last 40) ---\n${consoleLines.slice(-40).join('\n')}\n--- code-server ---\n${codeServerLog.slice(-4000)}`;
}

test('ghost text from diffill serve appears in VS Code and Tab accepts it', { timeout: 300000 }, async () => {
    await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(dirs.workspace)}`);
    await page.waitForSelector('.monaco-workbench', { timeout: 60000 });

    // The extension starts the server at startup; the status bar item says when it is ready.
    const ready = await waitFor('the Diffill status bar item to say ready', async () => {
        const label = await statusLabel();
        return /ready/i.test(label) ? label : false;
    }, 120000).catch(async (error) => {
        throw new Error(`${error.message}${await diagnostics()}`);
    });
    assert.match(ready, /^Diffill ready/);

    const row = page.locator('.explorer-folders-view .monaco-list-row[aria-label^="hello.py"]');
    await row.waitFor({ timeout: 30000 });
    await row.dblclick();
    await page.waitForSelector('.tab.active[data-resource-name="hello.py"]', { timeout: 30000 });

    await page.locator('.monaco-editor .view-lines').first().click();
    await page.keyboard.press('Control+End');
    await page.keyboard.type(TYPED, { delay: 40 });

    const ghost = await waitFor('ghost text', async () => {
        const text = await ghostText();
        return text.trim() !== '' ? text : false;
    }, 90000).catch(async (error) => {
        throw new Error(`${error.message}${await diagnostics()}`);
    });
    assert.equal(readFileSync(path.join(dirs.workspace, 'hello.py'), 'utf8'), INITIAL, 'nothing was saved yet');

    await page.keyboard.press('Tab');
    await page.keyboard.press('Control+S');
    const expected = INITIAL + TYPED + ghost;
    const saved = await waitFor('the saved file', () => {
        const text = readFileSync(path.join(dirs.workspace, 'hello.py'), 'utf8');
        return text !== INITIAL ? text : false;
    }, 20000);
    assert.equal(saved, expected, `file on disk should be the typed text plus the ghost text ${JSON.stringify(ghost)}`);

    // The status bar shows the latency of the completion that was shown.
    const label = await statusLabel();
    assert.match(label, /^Diffill ready \d+ ms$/, `status bar label: ${label}`);
});

async function openFile(name) {
    const row = page.locator(`.explorer-folders-view .monaco-list-row[aria-label^="${name}"]`);
    await row.waitFor({ timeout: 30000 });
    await row.dblclick();
    await page.waitForSelector(`.tab.active[data-resource-name="${name}"]`, { timeout: 30000 });
    await page.locator('.monaco-editor .view-lines').first().click();
    await page.keyboard.press('Control+End');
}

async function waitForGhost(what = 'ghost text') {
    return waitFor(what, async () => {
        const text = await ghostText();
        return text.trim() !== '' ? text : false;
    }, 90000).catch(async (error) => {
        throw new Error(`${error.message}${await diagnostics()}`);
    });
}

async function saveAndRead(name, previous) {
    await page.keyboard.press('Control+S');
    return waitFor(`${name} to be saved`, () => {
        const text = readFileSync(path.join(dirs.workspace, name), 'utf8');
        return text !== previous ? text : false;
    }, 20000);
}

test('accept next word (Ctrl+Right) takes a prefix of the ghost text', { timeout: 200000 }, async () => {
    await openFile('partial.py');
    await page.keyboard.type(TYPED, { delay: 40 });
    const ghost = await waitForGhost();

    await page.keyboard.press('Control+ArrowRight'); // editor.action.inlineSuggest.acceptNextWord
    const afterWord = await saveAndRead('partial.py', INITIAL);
    assert.ok(afterWord.startsWith(INITIAL + TYPED), afterWord);
    const word = afterWord.slice((INITIAL + TYPED).length);
    assert.notEqual(word, '', 'something was accepted');
    assert.ok(ghost.startsWith(word), `accepted ${JSON.stringify(word)} is a prefix of ${JSON.stringify(ghost)}`);
});

test('clicking the status bar item turns completions off and on', { timeout: 200000 }, async () => {
    const item = page.locator('[id="diffill.diffill.diffill.status"]').first();
    await item.click();
    await waitFor('the status bar to say disabled', async () => /^Diffill disabled/.test(await statusLabel()), 10000);
    const stored = JSON.parse(readFileSync(path.join(dirs.userData, 'User', 'settings.json'), 'utf8'));
    assert.equal(stored['diffill.enabled'], false, 'the toggle writes the diffill.enabled user setting');

    // The same text that got a suggestion in hello.py gets none while disabled.
    await openFile('toggle.py');
    await page.keyboard.type(TYPED, { delay: 40 });
    await sleep(3000);
    assert.equal((await ghostText()).trim(), '', 'no ghost text while disabled');

    await item.click();
    await waitFor('the status bar to say ready', async () => /^Diffill ready/.test(await statusLabel()), 10000).catch(
        async (error) => {
            throw new Error(`${error.message}${await diagnostics()}`);
        },
    );
    // Back in the editor, retype the last character: the suggestion is back.
    await page.locator('.monaco-editor .view-lines').first().click();
    await page.keyboard.press('Control+End');
    await page.keyboard.press('Backspace');
    await page.keyboard.type(TYPED.slice(-1));
    await waitForGhost('ghost text after enabling again');
});

// A team server that always answers the same middle: the suggestion is known character for
// character (accents, an arrow, an emoji that is a UTF-16 surrogate pair), so the test can assert
// that VS Code shows exactly it and Tab inserts exactly it (tests/editors/scripted_backend.py is
// the same server for the Neovim tests).
const SCRIPTED = '(2, "héllo → wörld 🙂")';

async function startScriptedBackend() {
    const prompts = [];
    const server = createHttpServer((req, res) => {
        let body = '';
        req.on('data', (d) => (body += d));
        req.on('end', () => {
            res.setHeader('Content-Type', 'application/json');
            if (req.method === 'GET' && req.url === '/v1/models') {
                res.end(JSON.stringify({ object: 'list', data: [{ id: 'scripted', object: 'model' }] }));
            } else if (req.method === 'POST' && req.url === '/v1/completions') {
                prompts.push(JSON.parse(body).prompt);
                const choice = { index: 0, text: SCRIPTED, finish_reason: 'stop' };
                res.end(JSON.stringify({ object: 'text_completion', model: 'scripted', choices: [choice] }));
            } else {
                res.statusCode = 404;
                res.end(JSON.stringify({ error: { message: 'not found' } }));
            }
        });
    });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    return { server, prompts, url: `http://127.0.0.1:${server.address().port}` };
}

test('the exact text a scripted team server sends is shown and inserted, unicode included', { timeout: 200000 }, async () => {
    const backend = await startScriptedBackend();
    try {
        await stopCodeServer();
        writeFileSync(path.join(dirs.workspace, 'scripted.py'), INITIAL);
        writeUserSettings(userSettings({ 'diffill.backendUrl': backend.url }));
        await startCodeServer();
        await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(dirs.workspace)}`);
        await page.waitForSelector('.monaco-workbench', { timeout: 60000 });
        await waitFor('the Diffill status bar item to say ready', async () => /ready/i.test(await statusLabel()), 120000).catch(
            async (error) => {
                throw new Error(`${error.message}${await diagnostics()}`);
            },
        );
        await openFile('scripted.py');
        await page.keyboard.type(TYPED, { delay: 40 });
        const ghost = await waitForGhost();
        assert.equal(ghost, SCRIPTED);
        assert.ok(backend.prompts.some((p) => p.endsWith(TYPED)), 'the typed text reached the server');
        await page.keyboard.press('Tab');
        const saved = await saveAndRead('scripted.py', INITIAL);
        assert.equal(saved, INITIAL + TYPED + SCRIPTED);
    } finally {
        backend.server.close();
    }
});

test('a missing Python interpreter gives a notification that says how to fix it', { timeout: 120000 }, async () => {
    // A fresh VS Code whose settings name an interpreter that does not exist.
    await stopCodeServer();
    writeUserSettings(userSettings({ 'diffill.pythonPath': path.join(work, 'no-such-python') }));
    await startCodeServer();
    await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(dirs.workspace)}`);
    await page.waitForSelector('.monaco-workbench', { timeout: 60000 });
    const toast = await waitFor('the error notification', async () => {
        const texts = await page.locator('.notifications-toasts .notification-list-item-message').allTextContents();
        return texts.find((t) => t.includes('Python was not found')) ?? false;
    }, 60000).catch(async (error) => {
        throw new Error(`${error.message}${await diagnostics()}`);
    });
    assert.match(toast, /diffill\.pythonPath/);
    assert.match(toast, /pip install -e <your diffill checkout>/);
    const buttons = await page.locator('.notifications-toasts .monaco-button').allTextContents();
    assert.ok(buttons.includes('Set Python Path'), `buttons: ${buttons.join(', ')}`);
    assert.match(await statusLabel(), /^Diffill error/);
});

test('a Python without the dependencies gets a notification naming them', { timeout: 120000 }, async () => {
    // An empty virtual environment of the test's Python: `diffill` is found (PYTHONPATH), torch is not.
    const venv = path.join(work, 'empty-venv');
    const made = spawnSync(python, ['-m', 'venv', '--without-pip', venv], { encoding: 'utf8', timeout: 60000 });
    assert.equal(made.status, 0, made.stderr);
    const venvPython = path.join(venv, 'bin', 'python');
    await stopCodeServer();
    writeUserSettings(userSettings({ 'diffill.pythonPath': venvPython }));
    await startCodeServer();
    await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(dirs.workspace)}`);
    await page.waitForSelector('.monaco-workbench', { timeout: 60000 });
    const toast = await waitFor('the error notification', async () => {
        const texts = await page.locator('.notifications-toasts .notification-list-item-message').allTextContents();
        return texts.find((t) => t.includes('missing dependencies')) ?? false;
    }, 60000).catch(async (error) => {
        throw new Error(`${error.message}${await diagnostics()}`);
    });
    assert.match(toast, /torch/);
    assert.ok(toast.includes(`${venvPython} -m pip install -e <your diffill checkout>`), toast);
    const buttons = await page.locator('.notifications-toasts .monaco-button').allTextContents();
    assert.ok(buttons.includes('Copy Install Command'), `buttons: ${buttons.join(', ')}`);
});

// Make sure the repository's Python packages are what the server runs.
test('the server under test is this checkout', () => {
    const probe = spawnSync(python, ['-c', 'import lsp_server, os; print(os.path.dirname(os.path.dirname(lsp_server.__file__)))'], {
        env: serverEnv(),
        encoding: 'utf8',
    });
    assert.equal(probe.status, 0, probe.stderr);
    assert.equal(path.resolve(probe.stdout.trim()), path.resolve(repoRoot));
});
