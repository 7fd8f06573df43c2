-- Diffill for Neovim: ghost-text completions from the Diffill language server (`diffill serve`).
--
--   require('diffill').setup({ settings = { modelPath = '~/models/x', maxTokens = 48 } })
--
-- On Neovim 0.12+ the suggestions come through the built-in `vim.lsp.inline_completion`; on 0.10 and
-- 0.11 (or with `inline = 'fallback'`) through this plugin's own ghost text (lua/diffill/ghost.lua).
local config = require('diffill.config')

local api = vim.api
local M = {}

local has_011 = vim.fn.has('nvim-0.11') == 1

--- Per client id: the title of the model-loading progress while it runs.
local loading = {}
--- Per client id: the last `diffill/status` from the server.
local server_status = {}

local function notify(msg, level)
  vim.notify('diffill: ' .. msg, level or vim.log.levels.INFO, { title = 'Diffill' })
end

--- The Diffill clients (optionally only those attached to `bufnr`).
---@param bufnr? integer
---@return vim.lsp.Client[]
function M.clients(bufnr)
  return vim.lsp.get_clients({ name = 'diffill', bufnr = bufnr })
end

--- Whether the built-in inline completion serves `bufnr` (else the fallback does).
---@param client vim.lsp.Client
---@return boolean
function M.use_native(client)
  local mode = config.options.inline
  if mode == 'fallback' or mode == false then
    return false
  end
  local native = vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.get ~= nil
  if mode == 'native' and not native then
    notify("inline = 'native' needs Neovim 0.12+ (vim.lsp.inline_completion); using the fallback", vim.log.levels.WARN)
    return false
  end
  local supports = true
  if has_011 then
    supports = client:supports_method('textDocument/inlineCompletion')
  end
  return native and supports
end

--- Accept the suggestion shown in the current buffer. Returns false when there is none, so that a
--- mapping can fall back to the key's normal action. Works from `<expr>` mappings.
---@return boolean
function M.accept()
  local bufnr = api.nvim_get_current_buf()
  if vim.b[bufnr].diffill_native then
    return vim.lsp.inline_completion.get({ bufnr = bufnr }) == true
  end
  return require('diffill.ghost').accept('all')
end

--- Accept the next word of the suggestion (fallback path).
function M.accept_word()
  return require('diffill.ghost').accept('word')
end

--- Accept the rest of the suggestion's current line (fallback path).
function M.accept_line()
  return require('diffill.ghost').accept('line')
end

--- Show the next (`count` > 0) or previous suggestion.
---@param count integer
function M.select(count)
  local bufnr = api.nvim_get_current_buf()
  if vim.b[bufnr].diffill_native then
    vim.lsp.inline_completion.select({ bufnr = bufnr, count = count })
    return true
  end
  return require('diffill.ghost').cycle(count)
end

--- Hide the suggestion (fallback path).
function M.dismiss()
  local ghost = require('diffill.ghost')
  if ghost.is_visible(0) then
    ghost.dismiss(0)
    return true
  end
  return false
end

local function set_keymaps(bufnr, native)
  local keys = config.options.keymaps
  if not keys then
    return
  end
  local function map(lhs, fn, desc)
    if lhs then
      vim.keymap.set('i', lhs, function()
        if fn() then
          return ''
        end
        return lhs
      end, { buffer = bufnr, expr = true, replace_keycodes = true, desc = desc })
    end
  end
  map(keys.accept, M.accept, 'Diffill: accept the suggestion')
  map(keys.next, function()
    return M.select(1)
  end, 'Diffill: next suggestion')
  map(keys.prev, function()
    return M.select(-1)
  end, 'Diffill: previous suggestion')
  if not native then
    map(keys.accept_word, M.accept_word, 'Diffill: accept the next word')
    map(keys.accept_line, M.accept_line, 'Diffill: accept the next line')
    map(keys.dismiss, M.dismiss, 'Diffill: hide the suggestion')
  end
end

--- Called on LspAttach of a Diffill client: turns ghost text on for `bufnr`.
---@param client vim.lsp.Client
---@param bufnr integer
function M.attach(client, bufnr)
  if config.options.inline == false then
    return
  end
  local native = M.use_native(client)
  vim.b[bufnr].diffill_native = native
  if native then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
  else
    require('diffill.ghost').attach(client, bufnr)
  end
  set_keymaps(bufnr, native)
end

--- Send the current settings to every running Diffill client (workspace/didChangeConfiguration).
function M.push_settings()
  local settings = config.server_settings()
  for _, client in ipairs(M.clients()) do
    client.settings = { diffill = vim.deepcopy(settings) }
    if has_011 then
      client:notify('workspace/didChangeConfiguration', { settings = { diffill = settings } })
    else
      client.notify('workspace/didChangeConfiguration', { settings = { diffill = settings } })
    end
  end
  if has_011 then
    -- Keep clients started later (new roots) in step.
    vim.lsp.config('diffill', { init_options = { diffill = settings }, settings = { diffill = settings } })
  end
end

--- Turn completions on or off everywhere (the server's `enabled` setting).
---@param enabled boolean
function M.set_enabled(enabled)
  config.enabled = enabled
  if not enabled then
    require('diffill.ghost').dismiss_all()
  end
  M.push_settings()
  notify(enabled and 'completions enabled' or 'completions disabled')
end

function M.toggle()
  M.set_enabled(not config.enabled)
end

--- Stop the Diffill clients and start them again on the buffers they served.
function M.restart()
  local buffers = {}
  local clients = M.clients()
  for _, client in ipairs(clients) do
    for bufnr in pairs(client.attached_buffers or {}) do
      buffers[#buffers + 1] = bufnr
    end
    if has_011 then
      client:stop()
    else
      client.stop()
    end
  end
  local function stopped()
    return #M.clients() == 0
  end
  if not vim.wait(3000, stopped, 50) then
    for _, client in ipairs(M.clients()) do
      if has_011 then
        client:stop(true)
      else
        client.stop(true)
      end
    end
    vim.wait(2000, stopped, 50)
  end
  local cfg = has_011 and vim.lsp.config.diffill or config.lsp_config()
  for _, bufnr in ipairs(buffers) do
    if api.nvim_buf_is_valid(bufnr) then
      local start = vim.deepcopy(cfg)
      start.root_dir = start.root_dir
        or vim.fs.root(bufnr, config.options.root_markers)
        or vim.fs.dirname(api.nvim_buf_get_name(bufnr))
      vim.lsp.start(start, { bufnr = bufnr })
    end
  end
  notify(('restarted the language server (%d buffer%s)'):format(#buffers, #buffers == 1 and '' or 's'))
end

--- Open the LSP log, where the server's stderr goes.
function M.show_log()
  vim.cmd.split(vim.fn.fnameescape(vim.lsp.get_log_path()))
end

--- A short status for statuslines: '' when no Diffill client runs.
---@return string
function M.statusline()
  local clients = M.clients(api.nvim_get_current_buf())
  if #clients == 0 then
    return ''
  end
  if not config.enabled then
    return 'Diffill off'
  end
  for _, client in ipairs(clients) do
    local st = server_status[client.id]
    if loading[client.id] or (st and st.state == 'loading') then
      return 'Diffill loading'
    elseif st and st.state == 'failed' then
      return 'Diffill error'
    end
  end
  local ms = require('diffill.ghost').last_latency_ms
  return ms and ('Diffill %d ms'):format(ms) or 'Diffill'
end

--- `:Diffill status`
function M.status()
  local lines = {}
  local clients = M.clients()
  if #clients == 0 then
    lines[1] = 'no Diffill language server is running'
  end
  for _, client in ipairs(clients) do
    local bufs = vim.tbl_keys(client.attached_buffers or {})
    local st = server_status[client.id] or {}
    local state = st.state or 'starting'
    if st.modelId and st.modelId ~= vim.NIL then
      state = state .. ' (' .. st.modelId .. ')'
    elseif loading[client.id] then
      state = state .. ' (' .. loading[client.id] .. ')'
    end
    lines[#lines + 1] = ('client %d: model %s, %d buffer%s, %s, cmd: %s'):format(
      client.id,
      state,
      #bufs,
      #bufs == 1 and '' or 's',
      vim.b.diffill_native and 'built-in inline completion' or 'Diffill ghost text',
      table.concat(type(client.config.cmd) == 'table' and client.config.cmd or { '?' }, ' ')
    )
  end
  lines[#lines + 1] = 'completions: ' .. (config.enabled and 'enabled' or 'disabled')
  local ms = require('diffill.ghost').last_latency_ms
  if ms then
    lines[#lines + 1] = ('last completion: %d ms'):format(ms)
  end
  notify(table.concat(lines, '\n'))
end

--- The model's state for the client serving `bufnr`: 'starting' (no status yet), 'loading',
--- 'ready' or 'failed'; nil when no Diffill client serves it.
---@param bufnr? integer
---@return string?
function M.state(bufnr)
  local client = M.clients(bufnr or api.nvim_get_current_buf())[1]
  if not client then
    return nil
  end
  local st = server_status[client.id]
  return st and st.state or 'starting'
end

--- Handler of the server's `diffill/status` notification.
function M._on_status(client_id, params)
  server_status[client_id] = params
  if params and params.state == 'failed' then
    notify('the model did not load: ' .. tostring(params.error), vim.log.levels.ERROR)
  end
end

--- Track the server's model-loading progress ($/progress) for the status.
function M._on_progress(ev)
  local client_id = ev.data and ev.data.client_id
  local client = client_id and vim.lsp.get_client_by_id(client_id)
  if not client or client.name ~= 'diffill' then
    return
  end
  local value = ev.data.params and ev.data.params.value or {}
  if value.kind == 'begin' then
    loading[client_id] = value.title or 'model'
  elseif value.kind == 'end' then
    loading[client_id] = nil
  end
end

--- Configure Diffill and (by default) enable the language server for all filetypes.
---@param opts? diffill.Options
function M.setup(opts)
  config.apply(opts)
  if not config.options.enable_lsp then
    return
  end
  if has_011 then
    vim.lsp.config('diffill', config.lsp_config())
    vim.lsp.enable('diffill')
    return
  end
  -- Neovim 0.10: start the client ourselves.
  local group = api.nvim_create_augroup('diffill.start', { clear = true })
  local function start(bufnr)
    if vim.bo[bufnr].buftype ~= '' then
      return
    end
    local fts = config.options.filetypes
    if fts and not vim.tbl_contains(fts, vim.bo[bufnr].filetype) then
      return
    end
    local cfg = config.lsp_config()
    cfg.root_dir = vim.fs.root(bufnr, config.options.root_markers)
      or vim.fs.dirname(api.nvim_buf_get_name(bufnr))
    vim.lsp.start(cfg, { bufnr = bufnr })
  end
  api.nvim_create_autocmd('FileType', {
    group = group,
    callback = function(ev)
      start(ev.buf)
    end,
  })
  for _, bufnr in ipairs(api.nvim_list_bufs()) do
    if api.nvim_buf_is_loaded(bufnr) and vim.bo[bufnr].filetype ~= '' then
      start(bufnr)
    end
  end
end

return M
