"""One module per ``feedstore`` subcommand, each with ``register(subparsers)``.

Adding a command is adding a module here and its name to ``COMMANDS``; the parser in
``feedstore.cli`` stays the same. Each module imports its heavy dependencies inside
its handler, so ``feedstore --help`` is instant.
"""

COMMANDS = ["serve", "demo", "stack", "source", "connector_config", "quarantine", "replay", "rebuild"]
