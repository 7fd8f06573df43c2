-- :checkhealth diffill
local config = require('diffill.config')

local M = {}

local health = vim.health

--- Runs `cmd` and returns (ok, stdout, stderr), waiting at most `timeout_ms`.
local function run(cmd, timeout_ms)
  local ok, obj = pcall(function()
    return vim.system(cmd, { text = true }):wait(timeout_ms)
  end)
  if not ok then
    return false, '', tostring(obj)
  end
  return obj.code == 0, vim.trim(obj.stdout or ''), vim.trim(obj.stderr or '')
end

local function last_line(text)
  local lines = vim.split(text or '', '\n', { trimempty = true })
  return lines[#lines] or ''
end

function M.check()
  health.start('Neovim')
  local v = vim.version()
  local version = ('%d.%d.%d'):format(v.major, v.minor, v.patch)
  if vim.fn.has('nvim-0.12') == 1 and vim.lsp.inline_completion then
    health.ok(('Neovim %s: built-in inline completion (vim.lsp.inline_completion)'):format(version))
  elseif vim.fn.has('nvim-0.10') == 1 then
    health.ok(('Neovim %s: Diffill ghost text (built-in inline completion needs 0.12)'):format(version))
  else
    health.error(('Neovim %s is too old'):format(version), { 'Diffill needs Neovim 0.10 or newer' })
  end
  if config.options.inline == 'fallback' then
    health.info("inline = 'fallback': using Diffill's own ghost text")
  end

  health.start('Language server')
  local cmd = config.server_cmd()
  local exe = vim.fn.exepath(cmd[1])
  if exe == '' then
    health.error(('server command not found: %s'):format(cmd[1]), {
      'Install the package from a clone of the Diffill repository: python3 -m pip install -e <your diffill checkout>',
      "Or point the plugin at it: require('diffill').setup({ python = '/path/to/venv/bin/python' })",
      "Or give the full command: require('diffill').setup({ cmd = { '/path/to/diffill', 'serve' } })",
    })
    return
  end
  health.ok(('server command: %s (%s)'):format(table.concat(cmd, ' '), exe))

  local python = config.python()
  if cmd[2] == '-m' then
    python = cmd[1]
  elseif vim.fs.basename(cmd[1]):match('^diffill') then
    -- The console script's own interpreter (first line of the script).
    local f = io.open(exe, 'r')
    local shebang = f and f:read('*l') or ''
    if f then
      f:close()
    end
    local interp = shebang:match('^#!%s*(%S+)')
    if interp and vim.fn.executable(interp) == 1 then
      python = interp
    end
  end
  if vim.fn.executable(python) ~= 1 then
    health.error(('Python not found: %s'):format(python), { "Set require('diffill').setup({ python = ... })" })
    return
  end
  local ok, out, err = run({ python, '-c', 'import diffill, lsp_server; print(diffill.__file__)' }, 30000)
  if not ok then
    health.error(('the diffill package does not import with %s: %s'):format(python, last_line(err)), {
      python .. ' -m pip install -e <your diffill checkout> (the package is not on PyPI)',
      "or set require('diffill').setup({ python = '/path/to/python/with/diffill' })",
    })
    return
  end
  health.ok(('Python package importable with %s (%s)'):format(python, out))

  health.start('Model')
  local settings = config.server_settings()
  local model = settings.modelPath
  local device = settings.device
  local probe = table.concat({
    'import sys',
    'from diffusion_core.engine import Engine',
    'e = Engine.from_pretrained(sys.argv[1] or None, device=sys.argv[2] or None)',
    'print(e.model_id)',
  }, '; ')
  local ok2, out2, err2 = run({ python, '-c', probe, model and vim.fn.expand(model) or '', device or '' }, 180000)
  if ok2 then
    health.ok(('model loads: %s%s'):format(last_line(out2), model and (' from ' .. model) or ' (default model)'))
  else
    health.error(('the model does not load%s: %s'):format(model and (' from ' .. model) or '', last_line(err2)), {
      "Set the model directory: require('diffill').setup({ settings = { modelPath = '/path/to/model' } })",
    })
  end

  health.start('Clients')
  local clients = vim.lsp.get_clients({ name = 'diffill' })
  if #clients == 0 then
    health.info('no Diffill client is running (open a file to start one)')
  end
  for _, client in ipairs(clients) do
    local bufs = vim.tbl_keys(client.attached_buffers or {})
    health.ok(('client %d attached to %d buffer(s)'):format(client.id, #bufs))
  end
end

return M
