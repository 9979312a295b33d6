# ruff: noqa: N999 - gunicorn looks for this file name
"""Gunicorn settings for running Feedstore with gunicorn directly.

    gunicorn -c deploy/gunicorn.conf.py

gives the same server as ``feedstore serve``: the settings come from the same
``FEEDSTORE_*`` environment through the same function, and the same start-up checks
run first. Use it when a process manager or platform expects a gunicorn command line,
or to add gunicorn settings of your own below the import (keep ``workers = 1``: one
process owns the DuckDB file, see docs/scaling.md).
"""

import sys

from feedstore.commands.serve import _preflight, gunicorn_options
from feedstore.config import ConfigError, Settings

try:
    _settings = Settings.from_env()
    _preflight(_settings)
except ConfigError as _ex:  # one clear line, as `feedstore serve` prints, not a traceback
    print(f"feedstore: {_ex}", file=sys.stderr)
    sys.exit(2)

globals().update(gunicorn_options(_settings))
wsgi_app = "api.app:get_app()"
