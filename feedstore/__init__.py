"""Feedstore: InTarget data feeds from an operator's change stream.

The application shell lives here: settings, logging, the service that wires consumer,
materializer and API together, and the ``feedstore`` command.
"""

__version__ = "0.1.0"
