-- Diffill: highlight groups, the :Diffill command, and ghost text for every Diffill client that
-- attaches (however it was started: setup(), vim.lsp.enable('diffill') or vim.lsp.start()).
if vim.g.loaded_diffill then
  return
end
vim.g.loaded_diffill = true

if vim.fn.has('nvim-0.10') ~= 1 then
  vim.notify('diffill: needs Neovim 0.10 or newer', vim.log.levels.WARN)
  return
end

local api = vim.api

local function set_highlights()
  api.nvim_set_hl(0, 'DiffillGhost', { link = 'Comment', default = true })
  api.nvim_set_hl(0, 'DiffillGhostHint', { link = 'NonText', default = true })
end
set_highlights()

local group = api.nvim_create_augroup('diffill', { clear = true })
api.nvim_create_autocmd('ColorScheme', { group = group, callback = set_highlights })

api.nvim_create_autocmd('LspAttach', {
  group = group,
  desc = 'Diffill: ghost text for the Diffill language server',
  callback = function(ev)
    local client = vim.lsp.get_client_by_id(ev.data.client_id)
    if client and client.name == 'diffill' then
      require('diffill').attach(client, ev.buf)
    end
  end,
})

api.nvim_create_autocmd('LspDetach', {
  group = group,
  callback = function(ev)
    local client = vim.lsp.get_client_by_id(ev.data.client_id)
    if client and client.name == 'diffill' then
      require('diffill.ghost').detach(ev.buf)
    end
  end,
})

api.nvim_create_autocmd('LspProgress', {
  group = group,
  callback = function(ev)
    require('diffill')._on_progress(ev)
  end,
})

local subcommands = {
  enable = function()
    require('diffill').set_enabled(true)
  end,
  disable = function()
    require('diffill').set_enabled(false)
  end,
  toggle = function()
    require('diffill').toggle()
  end,
  restart = function()
    require('diffill').restart()
  end,
  log = function()
    require('diffill').show_log()
  end,
  status = function()
    require('diffill').status()
  end,
}

api.nvim_create_user_command('Diffill', function(cmd)
  local name = cmd.fargs[1] or 'status'
  local fn = subcommands[name]
  if not fn then
    vim.notify('diffill: unknown subcommand ' .. name, vim.log.levels.ERROR)
    return
  end
  fn()
end, {
  nargs = '?',
  desc = 'Diffill: enable | disable | toggle | restart | log | status',
  complete = function(lead)
    return vim.tbl_filter(function(s)
      return vim.startswith(s, lead)
    end, vim.tbl_keys(subcommands))
  end,
})
