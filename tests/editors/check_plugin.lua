-- nvim -l check_plugin.lua PLUGIN_DIR: every Lua file of the plugin compiles, and loading its
-- modules defines no global variables. Exits non-zero with the reason on stderr.
local plugin = assert(arg[1], 'usage: nvim -l check_plugin.lua PLUGIN_DIR')
vim.opt.runtimepath:prepend(plugin)

local files = vim.fs.find(function(name)
  return name:match('%.lua$') ~= nil
end, { path = plugin, type = 'file', limit = math.huge })
if #files < 6 then
  io.stderr:write(('only %d Lua files found under %s\n'):format(#files, plugin))
  os.exit(1)
end
for _, f in ipairs(files) do
  local chunk, err = loadfile(f)
  if not chunk then
    io.stderr:write(err .. '\n')
    os.exit(1)
  end
end

local before = {}
for k in pairs(_G) do
  before[k] = true
end
for _, m in ipairs({ 'diffill', 'diffill.config', 'diffill.ghost', 'diffill.health' }) do
  require(m)
end
vim.cmd.runtime('plugin/diffill.lua')
local new = {}
for k in pairs(_G) do
  if not before[k] then
    new[#new + 1] = k
  end
end
if #new > 0 then
  io.stderr:write('globals defined: ' .. table.concat(new, ', ') .. '\n')
  os.exit(1)
end
print(('%d Lua files ok'):format(#files))
