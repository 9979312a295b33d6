"""Maps decoded change events onto the InTarget feeds and keeps them in DuckDB.

Exceptions::

    MaterializerError
     ├── MappingError   (materializer.mapping: the mapping file is wrong; raised at start)
     └── StoreError     (the DuckDB file cannot be opened or written; offsets do not move)

Lower-layer ``duckdb.Error`` is translated to :class:`StoreError` at the store boundary
with ``raise ... from``, so callers never need to import duckdb to handle failures.
"""

from __future__ import annotations


class MaterializerError(Exception):
    """Base of everything the materializer raises on purpose."""


class StoreError(MaterializerError):
    """The store cannot be written or read; the message says the cause and the fix."""
