import { execFile } from 'node:child_process';
import { accessSync, constants as fsConstants } from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import {
    CloseAction,
    DidChangeConfigurationNotification,
    ErrorAction,
    LanguageClient,
    type LanguageClientOptions,
    RevealOutputChannelOn,
    type ServerOptions,
    State,
    TransportKind,
    type WorkDoneProgressBegin,
    type WorkDoneProgressEnd,
    type WorkDoneProgressReport,
} from 'vscode-languageclient/node';
import {
    buildDidChangeConfigurationParams,
    buildInitializationOptions,
    buildServerSettings,
    CLIENT_KEYS,
    completionsWanted,
    installCommand,
    languageEnabled,
    resolveServerCommand,
    SECTION,
    SERVER_KEYS,
    type ServerCommand,
    type SettingGetter,
    startFailureAdvice,
} from './settings';
import { StatusBar } from './status';

/** Reads `diffill.*` fresh on every call, so the server always gets the current values. */
const getSetting: SettingGetter = (key) => vscode.workspace.getConfiguration(SECTION).get(key);

/** The server's notification of the model's state (lsp_server/server.py). */
const STATUS_NOTIFICATION = 'diffill/status';
interface ServerStatus {
    state: 'loading' | 'ready' | 'failed';
    modelId?: string | null;
    error?: string | null;
}

/** Settings that only a new server process can apply (command line, initialize-time capabilities). */
const RESTART_KEYS: readonly string[] = [...CLIENT_KEYS, 'completionProvider'];

/** Crash-restarts allowed within RESTART_WINDOW_MS before giving up and telling the user. */
const MAX_RESTARTS = 4;
const RESTART_WINDOW_MS = 3 * 60 * 1000;

type FailureReason = 'no-command' | 'no-package' | 'crashed';

/** Finds `command` the way spawn would (absolute/relative path, else each PATH entry). */
function findExecutable(command: string): string | undefined {
    const isFile = (p: string): boolean => {
        try {
            accessSync(p, process.platform === 'win32' ? fsConstants.F_OK : fsConstants.X_OK);
            return true;
        } catch {
            return false;
        }
    };
    if (command.includes('/') || command.includes('\\')) {
        return isFile(command) ? command : undefined;
    }
    const exts = process.platform === 'win32' ? (process.env.PATHEXT ?? '.EXE;.CMD;.BAT').split(';') : [''];
    for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
        for (const ext of ['', ...exts]) {
            const candidate = path.join(dir, command + ext);
            if (dir && isFile(candidate)) {
                return candidate;
            }
        }
    }
    return undefined;
}

/** Modules the server needs: the package itself and the dependencies that are most often missing. */
const REQUIRED_MODULES = ['diffill', 'lsp_server', 'pygls', 'lsprotocol', 'torch', 'tokenizers'];

interface Preflight {
    reason: FailureReason;
    missing?: string[];
}

/** Checks, before spawning the server, that its command exists and (for Python) that the package and
 * its main dependencies are importable (found, not imported: this takes a fraction of a second). */
function preflight(cmd: ServerCommand): Promise<Preflight | undefined> {
    if (!findExecutable(cmd.command)) {
        return Promise.resolve({ reason: 'no-command' });
    }
    if (!cmd.fromPython) {
        return Promise.resolve(undefined);
    }
    const probe =
        'import importlib.util as u, sys; ' +
        `m = [n for n in ${JSON.stringify(REQUIRED_MODULES)} if u.find_spec(n) is None]; ` +
        "print(' '.join(m)); sys.exit(3 if m else 0)";
    return new Promise((resolve) => {
        execFile(cmd.command, ['-c', probe], { timeout: 20000 }, (error, stdout) => {
            if (!error) {
                resolve(undefined);
            } else if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
                resolve({ reason: 'no-command' });
            } else if (error.code === 3) {
                resolve({ reason: 'no-package', missing: stdout.trim().split(/\s+/).filter(Boolean) });
            } else {
                resolve(undefined); // let the real start report whatever this is
            }
        });
    });
}

class DiffillExtension implements vscode.Disposable {
    private client: LanguageClient | undefined;
    private readonly log: vscode.LogOutputChannel;
    private readonly status: StatusBar;
    private readonly disposables: { dispose(): unknown }[] = [];
    private crashes: number[] = [];
    private busy: Promise<void> = Promise.resolve();
    private readonly progressTitles = new Map<string | number, string>();

    constructor() {
        this.log = vscode.window.createOutputChannel('Diffill', { log: true });
        this.status = new StatusBar();
        this.disposables.push(this.log, this.status);
        this.refreshEnabled();
    }

    register(): void {
        const commands: [string, () => unknown][] = [
            ['diffill.enable', () => this.setEnabled(true)],
            ['diffill.disable', () => this.setEnabled(false)],
            ['diffill.toggle', () => this.setEnabled(getSetting('enabled') === false)],
            ['diffill.restartServer', () => this.restart()],
            [
                'diffill.showServerLog',
                () => {
                    this.log.show(true);
                },
            ],
        ];
        for (const [id, fn] of commands) {
            this.disposables.push(vscode.commands.registerCommand(id, fn));
        }
        this.disposables.push(
            vscode.workspace.onDidChangeConfiguration((e) => {
                this.onConfigurationChanged(e);
            }),
            vscode.window.onDidChangeActiveTextEditor(() => {
                this.refreshEnabled();
            }),
        );
    }

    /** Serialises start/stop/restart so that a quick succession of them cannot interleave. */
    private queue(work: () => Promise<void>): Promise<void> {
        this.busy = this.busy.then(work, work);
        return this.busy;
    }

    start(): Promise<void> {
        return this.queue(() => this.doStart());
    }

    restart(): Promise<void> {
        this.crashes = [];
        return this.queue(async () => {
            await this.doStop();
            await this.doStart();
        });
    }

    private async doStart(): Promise<void> {
        const cmd = resolveServerCommand(getSetting);
        this.status.setPhase('starting');
        this.log.info(`Starting the language server: ${[cmd.command, ...cmd.args].join(' ')}`);
        const problem = await preflight(cmd);
        if (problem) {
            this.fail(cmd, problem.reason, problem.missing);
            return;
        }
        const serverOptions: ServerOptions = {
            command: cmd.command,
            args: cmd.args,
            transport: TransportKind.stdio,
            options: { env: { ...process.env, PYTHONUNBUFFERED: '1' } },
        };
        const clientOptions: LanguageClientOptions = {
            documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }, { scheme: 'vscode-remote' }],
            outputChannel: this.log,
            revealOutputChannelOn: RevealOutputChannelOn.Never,
            initializationOptions: () => buildInitializationOptions(getSetting),
            initializationFailedHandler: (error) => {
                this.log.error(`The server failed to initialize: ${String(error)}`);
                return false;
            },
            errorHandler: {
                error: () => ({ action: ErrorAction.Continue, handled: true }),
                closed: () => this.onServerClosed(cmd),
            },
            middleware: {
                provideInlineCompletionItems: async (document, position, context, token, next) => {
                    if (!completionsWanted(getSetting, document.languageId)) {
                        return null;
                    }
                    const started = Date.now();
                    const result = await next(document, position, context, token);
                    const items = Array.isArray(result) ? result : result?.items;
                    if (!token.isCancellationRequested && items && items.length > 0) {
                        this.status.setLatency(Date.now() - started);
                    }
                    return result;
                },
                // The server offers the same text as a `textDocument/completion` item for editors without
                // ghost text. VS Code shows it inline, so keep it out of the suggest list unless asked.
                provideCompletionItem: (document, position, context, token, next) =>
                    getSetting('completionProvider') === 'on' ? next(document, position, context, token) : null,
                workspace: {
                    // Answer the server's pull of the `diffill` section with the same object as
                    // initializationOptions, not VS Code's raw section (which holds client-only keys).
                    configuration: (params, token, next) => {
                        if (params.items.every((item) => item.section === SECTION)) {
                            return params.items.map(() => buildServerSettings(getSetting));
                        }
                        return next(params, token);
                    },
                },
                handleWorkDoneProgress: (token, params, next) => {
                    this.onProgress(token, params);
                    next(token, params);
                },
            },
        };
        const client = new LanguageClient('diffill', 'Diffill', serverOptions, clientOptions);
        this.client = client;
        client.onNotification(STATUS_NOTIFICATION, (params: ServerStatus) => {
            this.onServerStatus(params);
        });
        client.onDidChangeState((e) => {
            if (e.newState === State.Stopped && this.status.getPhase() !== 'error') {
                this.status.setPhase('stopped');
            }
        });
        try {
            await client.start();
        } catch (error) {
            this.log.error(`The server did not start: ${String(error)}`);
            this.client = undefined;
            const code = (error as NodeJS.ErrnoException | undefined)?.code;
            this.fail(cmd, code === 'ENOENT' ? 'no-command' : 'crashed');
            return;
        }
        if (this.status.getPhase() === 'starting') {
            // The server loads the model after `initialized` and reports it with diffill/status.
            this.status.setPhase('loading', 'waiting for the model');
        }
        this.log.info('The language server is running.');
    }

    private async doStop(): Promise<void> {
        const client = this.client;
        this.client = undefined;
        this.progressTitles.clear();
        if (client && client.needsStop()) {
            try {
                await client.stop(5000);
            } catch (error) {
                this.log.warn(`Stopping the server: ${String(error)}`);
            }
        }
        this.status.setPhase('stopped');
    }

    private onProgress(
        token: string | number,
        params: WorkDoneProgressBegin | WorkDoneProgressReport | WorkDoneProgressEnd,
    ): void {
        // Only for the tooltip: the phase itself follows `diffill/status`.
        if (params.kind === 'begin') {
            this.progressTitles.set(token, params.message ?? params.title);
            if (this.status.getPhase() !== 'ready') {
                this.status.setPhase('loading', params.message ?? params.title);
            }
        } else if (params.kind === 'report' && this.status.getPhase() === 'loading') {
            const pct = params.percentage === undefined ? '' : ` (${params.percentage}%)`;
            this.status.setPhase('loading', (params.message ?? this.progressTitles.get(token) ?? '') + pct);
        } else if (params.kind === 'end') {
            this.progressTitles.delete(token);
        }
    }

    /** The server's `diffill/status` notification: the model's state. */
    private onServerStatus(params: ServerStatus): void {
        switch (params.state) {
            case 'loading':
                this.status.setPhase('loading', params.modelId ?? '');
                break;
            case 'ready':
                this.status.setPhase('ready', params.modelId ?? '');
                break;
            case 'failed':
                this.status.setPhase('error', `the model did not load: ${params.error ?? 'unknown error'}`);
                break;
            default:
                break;
        }
    }

    private onServerClosed(cmd: ServerCommand): { action: CloseAction; handled: boolean } {
        const now = Date.now();
        this.crashes = this.crashes.filter((t) => now - t < RESTART_WINDOW_MS);
        this.crashes.push(now);
        if (this.crashes.length <= MAX_RESTARTS) {
            this.log.warn(`The language server exited; restarting it (${this.crashes.length}/${MAX_RESTARTS}).`);
            this.status.setPhase('starting');
            return { action: CloseAction.Restart, handled: true };
        }
        this.fail(cmd, 'crashed');
        return { action: CloseAction.DoNotRestart, handled: true };
    }

    /** Shows the one clear notification for a server that cannot run, with the fix as buttons. */
    private fail(cmd: ServerCommand, reason: FailureReason, missing: string[] = []): void {
        const message = startFailureAdvice(cmd, reason, missing);
        this.log.error(message);
        this.status.setPhase('error', reason === 'crashed' ? 'the language server stopped' : message.replace(/^Diffill: /, ''));
        const actions: string[] = [];
        if (reason === 'no-package') {
            actions.push('Copy Install Command');
        }
        actions.push(cmd.fromPython ? 'Set Python Path' : 'Edit Server Command', 'Show Log', 'Retry');
        void vscode.window.showErrorMessage(message, ...actions).then((choice) => {
            switch (choice) {
                case 'Copy Install Command':
                    void vscode.env.clipboard.writeText(installCommand(cmd.command));
                    break;
                case 'Set Python Path':
                    void vscode.commands.executeCommand('workbench.action.openSettings', 'diffill.pythonPath');
                    break;
                case 'Edit Server Command':
                    void vscode.commands.executeCommand('workbench.action.openSettings', 'diffill.serverCommand');
                    break;
                case 'Show Log':
                    this.log.show(true);
                    break;
                case 'Retry':
                    void this.restart();
                    break;
                default:
                    break;
            }
        });
    }

    private onConfigurationChanged(e: vscode.ConfigurationChangeEvent): void {
        if (!e.affectsConfiguration(SECTION)) {
            return;
        }
        this.refreshEnabled();
        if (RESTART_KEYS.some((key) => e.affectsConfiguration(`${SECTION}.${key}`))) {
            this.log.info('A setting that needs a new server changed: restarting the language server.');
            void this.restart();
            return;
        }
        const client = this.client;
        if (client?.isRunning() && SERVER_KEYS.some((key) => e.affectsConfiguration(`${SECTION}.${key}`))) {
            void client
                .sendNotification(DidChangeConfigurationNotification.type, buildDidChangeConfigurationParams(getSetting))
                .catch((error: unknown) => {
                    this.log.warn(`Sending the settings: ${String(error)}`);
                });
        }
    }

    private refreshEnabled(): void {
        this.status.setEnabled(getSetting('enabled') !== false);
        const languageId = vscode.window.activeTextEditor?.document.languageId;
        this.status.setLanguageOff(languageId !== undefined && !languageEnabled(getSetting('languages'), languageId));
    }

    private async setEnabled(enabled: boolean): Promise<void> {
        const inspected = vscode.workspace.getConfiguration(SECTION).inspect('enabled');
        const target =
            inspected?.workspaceFolderValue !== undefined
                ? vscode.ConfigurationTarget.WorkspaceFolder
                : inspected?.workspaceValue !== undefined
                  ? vscode.ConfigurationTarget.Workspace
                  : vscode.ConfigurationTarget.Global;
        await vscode.workspace.getConfiguration(SECTION).update('enabled', enabled, target);
        this.refreshEnabled();
        vscode.window.setStatusBarMessage(`Diffill completions ${enabled ? 'enabled' : 'disabled'}`, 2000);
    }

    async dispose(): Promise<void> {
        await this.queue(() => this.doStop());
        for (const d of this.disposables) {
            d.dispose();
        }
    }
}

let extension: DiffillExtension | undefined;

export function activate(): void {
    extension = new DiffillExtension();
    extension.register();
    console.log('[diffill] extension activated');
    // Not awaited: activation must not wait for Python and the model.
    void extension.start();
}

export async function deactivate(): Promise<void> {
    const current = extension;
    extension = undefined;
    await current?.dispose();
}
