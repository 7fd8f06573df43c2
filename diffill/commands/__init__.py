"""One module per `diffill` subcommand; each defines HELP, add_arguments(parser) and run(args) -> int."""
