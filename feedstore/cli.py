"""``feedstore``: the one command operators and developers type.

Subcommands live in ``feedstore.commands`` (one module each). Errors that the user can
fix (configuration, mapping, store) print one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cdc.types import CdcError
from feedstore.commands import COMMANDS
from feedstore.config import ConfigError
from materializer import MaterializerError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, MaterializerError, CdcError)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="feedstore", description="InTarget data feeds from a Debezium change stream.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"feedstore.commands.{name}").register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except USER_ERRORS as ex:
        print(f"feedstore: {ex}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
