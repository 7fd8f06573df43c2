-- Ghost text for Neovim without a usable `vim.lsp.inline_completion` (0.10, 0.11, or `inline = 'fallback'`).
--
-- On typing in Insert mode it asks the server for `textDocument/inlineCompletion` (debounced; a newer
-- request cancels the one in flight), draws the first suggestion after the cursor with extmarks
-- (`virt_text` inline for the first line, `virt_lines` for the rest), and accepts it, a word of it
-- or a line of it on a key. Moving the cursor, leaving Insert mode or leaving the buffer hides it.
local config = require('diffill.config')

local api = vim.api
local uv = vim.uv or vim.loop
local M = {}

local METHOD = 'textDocument/inlineCompletion'
M.ns = api.nvim_create_namespace('diffill.ghost')

local has_011 = vim.fn.has('nvim-0.11') == 1

---@class (private) diffill.GhostItem
---@field text string         full insert text
---@field row integer         0-based start row of the replaced range
---@field col integer         0-based start byte column
---@field end_row integer
---@field end_col integer
---@field command? table      server command to run after accepting

---@class (private) diffill.GhostState
---@field client_id integer
---@field augroup integer
---@field timer? uv.uv_timer_t
---@field request_id? integer
---@field seq integer
---@field items diffill.GhostItem[]
---@field index integer
---@field shown? { row: integer, col: integer, tick: integer, display: string }
---@field started_at? integer

---@type table<integer, diffill.GhostState>
local states = {}

--- Latency of the last completion shown, in milliseconds (for `:Diffill status`).
M.last_latency_ms = nil

local function client_request(client, method, params, handler, bufnr)
  if has_011 then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

local function client_cancel(client, id)
  if has_011 then
    return client:cancel_request(id)
  end
  return client.cancel_request(id)
end

--- LSP `character` on `line` -> byte column, in the client's position encoding.
local function byte_col(line, character, encoding)
  if encoding == 'utf-8' or not encoding then
    return math.min(character, #line)
  end
  local ok, col
  if has_011 then
    ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  else
    ok, col = pcall(vim.str_byteindex, line, character, encoding == 'utf-16')
  end
  return ok and col or #line
end

local function buf_line(bufnr, row)
  return api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
end

local function stop_timer(st)
  if st.timer then
    st.timer:stop()
    if not st.timer:is_closing() then
      st.timer:close()
    end
    st.timer = nil
  end
end

local function cancel_request(st)
  if st.request_id then
    local client = vim.lsp.get_client_by_id(st.client_id)
    if client then
      pcall(client_cancel, client, st.request_id)
    end
    st.request_id = nil
  end
end

--- Hide the suggestion of `bufnr` (keeps pending requests).
function M.clear(bufnr)
  local st = states[bufnr]
  if api.nvim_buf_is_valid(bufnr) then
    api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  end
  if st then
    st.shown = nil
    st.items = {}
    st.index = 1
  end
end

--- Hide the suggestion and stop what is pending for it.
function M.dismiss(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  local st = states[bufnr]
  if st then
    st.seq = st.seq + 1
    stop_timer(st)
    cancel_request(st)
  end
  M.clear(bufnr)
end

local function cursor()
  local pos = api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

--- The text of `item` still to be inserted at the cursor, or nil when the item does not fit the
--- buffer any more (the user typed something else).
local function remaining_text(bufnr, item)
  local row, col = cursor()
  if item.row ~= row or item.col > col then
    return nil
  end
  local typed = buf_line(bufnr, row):sub(item.col + 1, col)
  if item.text:sub(1, #typed) ~= typed then
    return nil
  end
  return item.text:sub(#typed + 1)
end

local function render(bufnr)
  local st = states[bufnr]
  api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  st.shown = nil
  local item = st.items[st.index]
  if not item then
    return
  end
  local display = remaining_text(bufnr, item)
  if not display or display == '' then
    return
  end
  local lines = vim.split(display, '\n', { plain = true })
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], 'DiffillGhost' } }
  end
  local virt_text = { { lines[1], 'DiffillGhost' } }
  if #st.items > 1 then
    local hint = { (' (%d/%d)'):format(st.index, #st.items), 'DiffillGhostHint' }
    table.insert(#virt_lines > 0 and virt_lines[#virt_lines] or virt_text, hint)
  end
  local row, col = cursor()
  api.nvim_buf_set_extmark(bufnr, M.ns, row, col, {
    virt_text = virt_text,
    virt_text_pos = 'inline',
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = 'combine',
    right_gravity = false,
  })
  st.shown = { row = row, col = col, tick = api.nvim_buf_get_changedtick(bufnr), display = display }
end

--- Turn the server's answer into items with byte ranges in this buffer.
local function to_items(bufnr, client, result)
  local raw = result and (result.items or result) or {}
  local items = {}
  local row, col = cursor()
  for _, r in ipairs(raw) do
    local text = r.insertText
    if type(text) == 'table' then
      -- A snippet: show and insert its text without tab stops.
      text = (text.value or ''):gsub('%$%{%d+:([^}]*)%}', '%1'):gsub('%$%{%d+%}', ''):gsub('%$%d+', '')
    end
    if type(text) == 'string' and text ~= '' then
      local item = { text = text, row = row, col = col, end_row = row, end_col = col, command = r.command }
      if r.range then
        local enc = client.offset_encoding
        item.row = r.range.start.line
        item.col = byte_col(buf_line(bufnr, item.row), r.range.start.character, enc)
        item.end_row = r.range['end'].line
        item.end_col = byte_col(buf_line(bufnr, item.end_row), r.range['end'].character, enc)
      end
      items[#items + 1] = item
    end
  end
  return items
end

local function request(bufnr)
  local st = states[bufnr]
  if not st or not config.enabled or api.nvim_get_current_buf() ~= bufnr then
    return
  end
  if not vim.startswith(api.nvim_get_mode().mode, 'i') then
    return
  end
  local client = vim.lsp.get_client_by_id(st.client_id)
  if not client then
    return
  end
  cancel_request(st)
  st.seq = st.seq + 1
  local seq = st.seq
  local tick = api.nvim_buf_get_changedtick(bufnr)
  local row, col = cursor()
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = 2 } -- Automatic
  local started = uv.hrtime()
  local ok, id = client_request(client, METHOD, params, function(err, result)
    if st.seq ~= seq then
      return -- superseded
    end
    st.request_id = nil
    if err or not api.nvim_buf_is_valid(bufnr) or api.nvim_get_current_buf() ~= bufnr then
      return
    end
    local r, c = cursor()
    if api.nvim_buf_get_changedtick(bufnr) ~= tick or r ~= row or c ~= col then
      return -- stale: the buffer or the cursor moved on
    end
    if not vim.startswith(api.nvim_get_mode().mode, 'i') then
      return
    end
    st.items = to_items(bufnr, client, result)
    st.index = 1
    render(bufnr)
    if st.shown then
      M.last_latency_ms = math.floor((uv.hrtime() - started) / 1e6)
    end
  end, bufnr)
  if ok then
    st.request_id = id
  end
end

--- Ask again after `debounce_ms` (each call restarts the wait and drops the pending answer).
function M.schedule(bufnr)
  local st = states[bufnr]
  if not st then
    return
  end
  st.seq = st.seq + 1
  cancel_request(st)
  stop_timer(st)
  if not config.enabled then
    return
  end
  local timer = assert(uv.new_timer())
  st.timer = timer
  timer:start(
    config.options.debounce_ms or 0,
    0,
    vim.schedule_wrap(function()
      if st.timer == timer then
        stop_timer(st)
        request(bufnr)
      end
    end)
  )
end

--- Ask now (no debounce), e.g. from a key.
function M.trigger(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  if states[bufnr] then
    stop_timer(states[bufnr])
    request(bufnr)
  end
end

function M.is_visible(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  local st = states[bufnr]
  return st ~= nil and st.shown ~= nil
end

--- The suggestion text shown after the cursor, or nil.
function M.visible_text(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  local st = states[bufnr]
  return st and st.shown and st.shown.display or nil
end

local function run_command(st, bufnr, command)
  local client = vim.lsp.get_client_by_id(st.client_id)
  if not client or not command then
    return
  end
  if has_011 then
    client:exec_cmd(command, { bufnr = bufnr })
  else
    client.request('workspace/executeCommand', { command = command.command, arguments = command.arguments }, nil, bufnr)
  end
end

--- Insert `text` at the cursor and put the cursor after it.
local function insert_at_cursor(bufnr, text)
  local row, col = cursor()
  local lines = vim.split(text, '\n', { plain = true })
  api.nvim_buf_set_text(bufnr, row, col, row, col, lines)
  local end_row = row + #lines - 1
  local end_col = (#lines == 1 and col or 0) + #lines[#lines]
  api.nvim_win_set_cursor(0, { end_row + 1, end_col })
end

--- The part of `display` that `kind` accepts: all of it, its next word, or the rest of its line.
local function piece(display, kind)
  if kind == 'word' then
    local s = display:match('^%s*[%w_]+') or display:match('^%s*[^%w_%s]+') or display:match('^%s+')
    return s or display
  elseif kind == 'line' then
    local nl = display:find('\n', 1, true)
    if nl == 1 then
      return '\n' .. (display:sub(2):match('^[^\n]*') or '')
    end
    return nl and display:sub(1, nl - 1) or display
  end
  return display
end

--- Accept the suggestion (`kind`: 'all' (default), 'word' or 'line'). Returns false when none is
--- shown. The edit happens on the next tick, so this can be called from an `<expr>` mapping.
---@param kind? 'all'|'word'|'line'
---@return boolean
function M.accept(kind)
  kind = kind or 'all'
  local bufnr = api.nvim_get_current_buf()
  local st = states[bufnr]
  if not st or not st.shown then
    return false
  end
  local item = st.items[st.index]
  local display = st.shown.display
  vim.schedule(function()
    if not api.nvim_buf_is_valid(bufnr) or api.nvim_get_current_buf() ~= bufnr then
      return
    end
    M.dismiss(bufnr)
    if kind == 'all' then
      local lines = vim.split(item.text, '\n', { plain = true })
      local row, col = cursor()
      -- Replace the item's range, which ends at the cursor or beyond it.
      local end_row, end_col = item.end_row, item.end_col
      if end_row < row or (end_row == row and end_col < col) then
        end_row, end_col = row, col
      end
      api.nvim_buf_set_text(bufnr, item.row, item.col, end_row, end_col, lines)
      local last_row = item.row + #lines - 1
      local last_col = (#lines == 1 and item.col or 0) + #lines[#lines]
      api.nvim_win_set_cursor(0, { last_row + 1, last_col })
      run_command(st, bufnr, item.command)
    else
      insert_at_cursor(bufnr, piece(display, kind))
    end
  end)
  return true
end

--- Show the next (`delta` = 1) or previous (-1) suggestion.
function M.cycle(delta)
  local bufnr = api.nvim_get_current_buf()
  local st = states[bufnr]
  if not st or #st.items < 2 then
    return false
  end
  st.index = (st.index - 1 + delta) % #st.items + 1
  render(bufnr)
  return true
end

--- Start the fallback for `bufnr`, served by `client`.
function M.attach(client, bufnr)
  if states[bufnr] then
    states[bufnr].client_id = client.id
    return
  end
  local group = api.nvim_create_augroup('diffill.ghost.' .. bufnr, { clear = true })
  local st = { client_id = client.id, augroup = group, seq = 0, items = {}, index = 1 }
  states[bufnr] = st
  api.nvim_create_autocmd({ 'TextChangedI', 'TextChangedP' }, {
    group = group,
    buffer = bufnr,
    desc = 'Diffill: ask for a new suggestion',
    callback = function()
      M.clear(bufnr)
      M.schedule(bufnr)
    end,
  })
  api.nvim_create_autocmd('CursorMovedI', {
    group = group,
    buffer = bufnr,
    desc = 'Diffill: hide the suggestion when the cursor moves away',
    callback = function()
      local shown = st.shown
      if shown then
        local row, col = cursor()
        if row ~= shown.row or col ~= shown.col or api.nvim_buf_get_changedtick(bufnr) ~= shown.tick then
          M.dismiss(bufnr)
        end
      end
    end,
  })
  api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group,
    buffer = bufnr,
    desc = 'Diffill: hide the suggestion',
    callback = function()
      M.dismiss(bufnr)
    end,
  })
  api.nvim_create_autocmd({ 'BufUnload', 'BufWipeout' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.detach(bufnr)
    end,
  })
end

function M.detach(bufnr)
  local st = states[bufnr]
  if not st then
    return
  end
  M.dismiss(bufnr)
  pcall(api.nvim_del_augroup_by_id, st.augroup)
  states[bufnr] = nil
end

function M.is_attached(bufnr)
  return states[bufnr] ~= nil
end

--- Hide every suggestion (completions turned off).
function M.dismiss_all()
  for bufnr in pairs(states) do
    M.dismiss(bufnr)
  end
end

return M
