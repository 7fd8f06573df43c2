import * as vscode from 'vscode';

export type ServerPhase = 'starting' | 'loading' | 'ready' | 'error' | 'stopped';

/**
 * The Diffill status bar item: what the server is doing, the last completion's latency, and a
 * click that toggles completions.
 */
export class StatusBar implements vscode.Disposable {
    private readonly item: vscode.StatusBarItem;
    private phase: ServerPhase = 'starting';
    private detail = '';
    private enabled = true;
    private languageOff = false;
    private latencyMs: number | undefined;

    constructor() {
        this.item = vscode.window.createStatusBarItem('diffill.status', vscode.StatusBarAlignment.Right, 100);
        this.item.name = 'Diffill';
        this.item.command = 'diffill.toggle';
        this.render();
        this.item.show();
    }

    setPhase(phase: ServerPhase, detail = ''): void {
        this.phase = phase;
        this.detail = detail;
        this.render();
    }

    getPhase(): ServerPhase {
        return this.phase;
    }

    setEnabled(enabled: boolean): void {
        this.enabled = enabled;
        this.render();
    }

    /** Whether completions are off for the active editor's language (`diffill.languages`). */
    setLanguageOff(off: boolean): void {
        this.languageOff = off;
        this.render();
    }

    setLatency(ms: number): void {
        this.latencyMs = ms;
        this.render();
    }

    private render(): void {
        const latency = this.latencyMs === undefined ? '' : ` ${Math.round(this.latencyMs)} ms`;
        const tooltip = new vscode.MarkdownString(undefined, true);
        let text: string;
        this.item.backgroundColor = undefined;
        switch (this.phase) {
            case 'starting':
                text = '$(loading~spin) Diffill';
                tooltip.appendMarkdown('Diffill: starting the language server…');
                break;
            case 'loading':
                text = '$(loading~spin) Diffill';
                tooltip.appendMarkdown(`Diffill: loading the model${this.detail ? ` — ${this.detail}` : '…'}`);
                break;
            case 'error':
                text = '$(error) Diffill';
                this.item.backgroundColor = new vscode.ThemeColor('statusBarItem.errorBackground');
                tooltip.appendMarkdown(`Diffill: ${this.detail || 'the language server is not running'}.`);
                tooltip.appendMarkdown('\n\nRun **Diffill: Show Server Log** for details, **Diffill: Restart Language Server** to retry.');
                break;
            case 'stopped':
                text = '$(debug-stop) Diffill';
                tooltip.appendMarkdown('Diffill: the language server is stopped.');
                break;
            case 'ready':
            default:
                text = `$(sparkle) Diffill${latency}`;
                tooltip.appendMarkdown(`Diffill: ready${this.detail ? ` — ${this.detail}` : ''}.`);
                if (this.latencyMs !== undefined) {
                    tooltip.appendMarkdown(`\n\nLast completion: ${Math.round(this.latencyMs)} ms.`);
                }
                break;
        }
        if (!this.enabled) {
            text = this.phase === 'error' ? text : '$(circle-slash) Diffill';
            tooltip.appendMarkdown('\n\nCompletions are **disabled**. Click to enable.');
        } else {
            if (this.languageOff) {
                tooltip.appendMarkdown('\n\nCompletions are off for this language (`diffill.languages`).');
            }
            tooltip.appendMarkdown('\n\nClick to disable completions.');
        }
        this.item.text = text;
        this.item.tooltip = tooltip;
        this.item.accessibilityInformation = {
            label: `Diffill ${this.enabled ? this.phase : 'disabled'}${latency}`,
        };
    }

    dispose(): void {
        this.item.dispose();
    }
}
