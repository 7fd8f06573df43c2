/**
 * What the extension sends to the Diffill language server, built from the `diffill.*` settings.
 *
 * This module does not import `vscode`: the Node test (`test/server.test.mjs`) imports the same
 * functions to talk to the real server exactly as the extension does.
 *
 * The server's schema lives in `lsp_server/settings.py`. Every key in `SERVER_KEYS` is a `diffill.*`
 * setting of the same name in `package.json`; the server reports unknown keys, so only these are sent.
 */

/** The `diffill` section keys the server understands, in the order of `lsp_server/settings.py`. */
export const SERVER_KEYS = [
    'modelPath',
    'backendUrl',
    'backendApiKey',
    'backendModel',
    'device',
    'dtype',
    'enabled',
    'maxTokens',
    'maxLines',
    'timeBudgetMs',
    'prefixTokens',
    'suffixTokens',
    'extraContextTokens',
    'debounceMs',
    'quality',
    'length',
    'languages',
    'cacheSize',
    'cacheTtlS',
    'prefetch',
    'completionProvider',
] as const;

export type ServerKey = (typeof SERVER_KEYS)[number];

/** Settings that only the extension uses (how to start the server). */
export const CLIENT_KEYS = ['pythonPath', 'serverCommand'] as const;

/** The configuration section, as in `workspace.getConfiguration('diffill')`. */
export const SECTION = 'diffill';

/** Reads one setting of the `diffill` section (the declared default when the user set none). */
export type SettingGetter = (key: string) => unknown;

/** The `diffill` section as the server receives it (initializationOptions, didChangeConfiguration, workspace/configuration). */
export type ServerSettings = Record<ServerKey, unknown>;

/** How to spawn the server. */
export interface ServerCommand {
    command: string;
    args: string[];
    /** True when the command was derived from `diffill.pythonPath` (so a missing package can be diagnosed). */
    fromPython: boolean;
}

/** Settings whose values mean "let the server decide": sent as null. */
const AUTO_VALUES: Partial<Record<ServerKey, readonly unknown[]>> = {
    modelPath: ['', null, undefined],
    backendUrl: ['', null, undefined],
    backendApiKey: ['', null, undefined],
    backendModel: ['', null, undefined],
    device: ['', 'auto', null, undefined],
    dtype: ['', 'auto', null, undefined],
};

/**
 * The `diffill` section for the server: exactly the keys of `SERVER_KEYS`, with "auto" / empty
 * values turned into null (the server's "choose for me").
 */
export function buildServerSettings(get: SettingGetter): ServerSettings {
    const out = {} as ServerSettings;
    for (const key of SERVER_KEYS) {
        let value = get(key);
        const auto = AUTO_VALUES[key];
        if (auto?.includes(value)) {
            value = null;
        } else if (typeof value === 'string' && auto) {
            value = value.trim();
        }
        if (value === undefined) {
            continue; // let the server keep its default
        }
        out[key] = value;
    }
    return out;
}

/** The `initialize` request's initializationOptions: the `diffill` section, wrapped like didChangeConfiguration. */
export function buildInitializationOptions(get: SettingGetter): { [SECTION]: ServerSettings } {
    return { [SECTION]: buildServerSettings(get) };
}

/** The params of `workspace/didChangeConfiguration` after a `diffill.*` setting changed. */
export function buildDidChangeConfigurationParams(get: SettingGetter): { settings: { [SECTION]: ServerSettings } } {
    return { settings: { [SECTION]: buildServerSettings(get) } };
}

/**
 * The command line that starts `diffill serve` over stdio: `diffill.serverCommand` when set, else
 * `<python> -m diffill.cli serve` with `diffill.pythonPath` (default `python3`, `python` on Windows).
 */
export function resolveServerCommand(get: SettingGetter, platform: string = process.platform): ServerCommand {
    const custom = get('serverCommand');
    if (Array.isArray(custom) && custom.length > 0 && custom.every((s) => typeof s === 'string')) {
        const [command, ...args] = custom;
        if (command.trim() !== '') {
            return { command, args, fromPython: false };
        }
    }
    if (typeof custom === 'string' && custom.trim() !== '') {
        const parts = custom.trim().split(/\s+/);
        return { command: parts[0], args: parts.slice(1), fromPython: false };
    }
    const configured = get('pythonPath');
    const python =
        typeof configured === 'string' && configured.trim() !== ''
            ? configured.trim()
            : platform === 'win32'
              ? 'python'
              : 'python3';
    return { command: python, args: ['-m', 'diffill.cli', 'serve'], fromPython: true };
}

/**
 * Whether completions are wanted for `languageId`, with the server's rule for `diffill.languages`:
 * `"*"` means all, `"-id"` excludes one, exclusions win.
 */
export function languageEnabled(languages: unknown, languageId: string): boolean {
    const items = Array.isArray(languages) ? languages.filter((s) => typeof s === 'string').map((s) => s.toLowerCase()) : ['*'];
    const lang = languageId.toLowerCase();
    if (items.includes(`-${lang}`)) {
        return false;
    }
    return items.includes('*') || items.includes(lang);
}

/** Whether the extension should ask the server at all for a document of `languageId`. */
export function completionsWanted(get: SettingGetter, languageId: string): boolean {
    return get('enabled') !== false && languageEnabled(get('languages'), languageId);
}

/** The command that installs Diffill for `python`. The package is not on PyPI: it is installed
 * from a clone of its repository (editable, so the checkout's model and editor code stay in step). */
export function installCommand(python: string): string {
    return `${python} -m pip install -e <your diffill checkout>`;
}

/** The help text shown when the server cannot start, naming what to do. `missing`: Python modules
 * not found (for 'no-package'). */
export function startFailureAdvice(
    cmd: ServerCommand,
    reason: 'no-command' | 'no-package' | 'crashed',
    missing: readonly string[] = [],
): string {
    const shown = [cmd.command, ...cmd.args].join(' ');
    switch (reason) {
        case 'no-command':
            return cmd.fromPython
                ? `Diffill: Python was not found ("${cmd.command}"). Install Python 3.10+ and run ` +
                      `"${installCommand('python3')}", or set "diffill.pythonPath" to the interpreter that has it.`
                : `Diffill: the server command "${cmd.command}" was not found. Fix "diffill.serverCommand" ` +
                      `(it should start "diffill serve"), or clear it to use "diffill.pythonPath".`;
        case 'no-package': {
            const own = missing.length === 0 || missing.includes('diffill') || missing.includes('lsp_server');
            const what = own
                ? 'the Python package "diffill" is not installed'
                : `the Python package "diffill" is missing dependencies (${missing.join(', ')})`;
            return (
                `Diffill: ${what} for ${cmd.command}. Run "${installCommand(cmd.command)}" (it installs the dependencies too), ` +
                `or set "diffill.pythonPath" to the interpreter of the environment where it is installed.`
            );
        }
        case 'crashed':
        default:
            return `Diffill: the language server (${shown}) stopped. See "Diffill: Show Server Log" for its output.`;
    }
}
