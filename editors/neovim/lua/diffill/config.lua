-- Options of the Diffill plugin and what they turn into for the language server.
local M = {}

---@class diffill.Keymaps
---@field accept string|false        Accept the whole suggestion (falls back to the key itself).
---@field accept_word string|false   Accept the next word of the suggestion (fallback path only).
---@field accept_line string|false   Accept the rest of the current line of the suggestion (fallback path only).
---@field next string|false          Show the next suggestion.
---@field prev string|false          Show the previous suggestion.
---@field dismiss string|false       Hide the suggestion (fallback path only).

---@class diffill.Options
---@field cmd? string[]              Command that starts `diffill serve` over stdio.
---@field python? string             Python with the `diffill` package (used when `cmd` is nil).
---@field settings table             Server settings (lsp_server/settings.py; camelCase or snake_case keys).
---@field inline 'auto'|'native'|'fallback'|false  Ghost text engine: built-in `vim.lsp.inline_completion` (0.12+) or the plugin's own.
---@field debounce_ms integer        Fallback path: wait after typing before asking the server.
---@field filetypes? string[]        Filetypes to attach to (nil: all).
---@field root_markers string[]      Files that mark a project root.
---@field keymaps diffill.Keymaps|false
---@field enable_lsp boolean         Let `setup()` call `vim.lsp.enable('diffill')` (or start the client on 0.10).
M.defaults = {
  cmd = nil,
  python = nil,
  settings = {},
  inline = 'auto',
  debounce_ms = 75,
  filetypes = nil,
  root_markers = { '.git', '.hg', 'pyproject.toml', 'package.json', 'Cargo.toml', 'go.mod' },
  keymaps = {
    accept = '<Tab>',
    accept_word = '<M-Right>',
    accept_line = '<M-Down>',
    next = '<M-]>',
    prev = '<M-[>',
    dismiss = '<C-]>',
  },
  enable_lsp = true,
}

---@type diffill.Options
M.options = vim.deepcopy(M.defaults)

--- Completions on/off (the server's `enabled` setting; `:Diffill toggle`).
M.enabled = true

---@param opts? table
---@return diffill.Options
function M.apply(opts)
  opts = opts or {}
  assert(type(opts) == 'table', 'diffill: setup() expects a table')
  local merged = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts)
  if opts.keymaps == false then
    merged.keymaps = false
  end
  -- Lists replace, they do not merge by index.
  for _, key in ipairs({ 'cmd', 'filetypes', 'root_markers' }) do
    if opts[key] ~= nil then
      merged[key] = opts[key]
    end
  end
  local inline = merged.inline
  if not (inline == 'auto' or inline == 'native' or inline == 'fallback' or inline == false) then
    error(("diffill: inline must be 'auto', 'native', 'fallback' or false, got %s"):format(vim.inspect(inline)))
  end
  M.options = merged
  if merged.settings.enabled ~= nil then
    M.enabled = merged.settings.enabled ~= false
  end
  return merged
end

--- `model_path` -> `modelPath`, `cache_ttl_s` -> `cacheTtlS`; camelCase keys pass unchanged.
---@param key string
---@return string
function M.camel(key)
  return (key:gsub('_(%w)', function(c)
    return c:upper()
  end))
end

--- The `diffill` settings section for the server: the user's `settings` with camelCase keys, plus
--- `enabled`. Keys the user did not set are left to the server's defaults.
---@return table
function M.server_settings()
  local out = {}
  for key, value in pairs(M.options.settings or {}) do
    out[M.camel(key)] = value
  end
  out.enabled = M.enabled
  return out
end

--- The Python interpreter to use for checks and for the default command.
---@return string
function M.python()
  if M.options.python and M.options.python ~= '' then
    return M.options.python
  end
  local is_win = vim.fn.has('win32') == 1
  return is_win and 'python' or 'python3'
end

--- The command line that starts the server.
---@return string[]
function M.server_cmd()
  if M.options.cmd and #M.options.cmd > 0 then
    return vim.deepcopy(M.options.cmd)
  end
  if not M.options.python and vim.fn.executable('diffill') == 1 then
    return { 'diffill', 'serve' }
  end
  return { M.python(), '-m', 'diffill.cli', 'serve' }
end

--- The table for `vim.lsp.config('diffill', ...)` / `vim.lsp.start()`.
---@return vim.lsp.Config
function M.lsp_config()
  local settings = M.server_settings()
  return {
    name = 'diffill',
    cmd = M.server_cmd(),
    filetypes = M.options.filetypes,
    root_markers = M.options.root_markers,
    init_options = { diffill = settings },
    settings = { diffill = vim.deepcopy(settings) },
    handlers = {
      -- The model's state: { state = 'loading'|'ready'|'failed', modelId, error }.
      ['diffill/status'] = function(_, params, ctx)
        require('diffill')._on_status(ctx.client_id, params)
      end,
    },
  }
end

return M
