"""One module per `diffill` subcommand; each defines HELP, add_arguments(parser) and run(args) -> int."""


class CommandError(Exception):
    """A failure the user can act on: ``diffill`` prints ``diffill COMMAND: message`` (one line,
    no traceback) and exits with status 1."""
