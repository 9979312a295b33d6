"""Debezium change events in, decoded row changes out.

Exceptions raised on purpose by this package::

    CdcError
     ├── DecodeError     bad bytes, not JSON, not a Debezium envelope, or a value
     │                   that does not fit its type (the record goes to quarantine)
     └── ConsumerError   Kafka-side failures (defined in cdc.consumer)

Catch `CdcError` to handle both; everything else is a bug.
"""

from cdc.decode import Change, decode
from cdc.types import CdcError, ColumnType, DecodeError, parse_column_type

__all__ = ["CdcError", "Change", "ColumnType", "DecodeError", "decode", "parse_column_type"]
