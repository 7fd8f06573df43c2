-- Configuration of the Diffill language server for `vim.lsp.enable('diffill')` (Neovim 0.11+).
-- Override any field with `vim.lsp.config('diffill', {...})`, or use require('diffill').setup().
-- Ghost text is turned on by the plugin's LspAttach handler (plugin/diffill.lua).
return require('diffill.config').lsp_config()
