// Shared by the Node tests: which Python runs the server, the test model, scratch folders.
//
//   DIFFILL_PYTHON      interpreter with the project's dependencies (default: python3)
//   DIFFILL_REPO        checkout whose packages the server runs (default: this repository)
//   DIFFILL_TEST_MODEL  model directory (default: a tiny random-weight model made once per run by
//                       tests/model_fixtures.py's make_tiny_model_dir)
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(process.env.DIFFILL_REPO ?? path.join(here, '..', '..', '..'));
export const python = process.env.DIFFILL_PYTHON ?? 'python3';
const workRoot = path.join(here, '..', '.test-work');

/** The environment the server runs in: this checkout first on PYTHONPATH. */
export function serverEnv() {
    const parts = [repoRoot, process.env.PYTHONPATH].filter(Boolean);
    return { ...process.env, PYTHONPATH: parts.join(path.delimiter), PYTHONUNBUFFERED: '1' };
}

/** A fresh scratch folder under editors/vscode/.test-work (git-ignored). */
export function scratchDir(name) {
    mkdirSync(workRoot, { recursive: true });
    return mkdtempSync(path.join(workRoot, `${name}-`));
}

let model;
/** The model directory the tests give the server. */
export function prepareModel() {
    if (model) {
        return model;
    }
    if (process.env.DIFFILL_TEST_MODEL) {
        model = path.resolve(process.env.DIFFILL_TEST_MODEL);
        if (!existsSync(model)) {
            throw new Error(`DIFFILL_TEST_MODEL=${model} does not exist`);
        }
        return model;
    }
    const dir = path.join(scratchDir('model'), 'tiny');
    const made = spawnSync(
        python,
        ['-c', 'import sys; sys.path.insert(0, sys.argv[2]); from model_fixtures import make_tiny_model_dir; make_tiny_model_dir(sys.argv[1])', dir, path.join(repoRoot, 'tests')],
        { env: serverEnv(), encoding: 'utf8', timeout: 300000 },
    );
    if (made.status !== 0) {
        throw new Error(`could not make the tiny test model with ${python}: ${made.error ?? ''}\n${made.stderr}`);
    }
    model = dir;
    return model;
}

