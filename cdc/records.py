"""The unit the consumer hands on: one Kafka message with its coordinates."""

from __future__ import annotations

from dataclasses import dataclass


# Not frozen, though nothing changes a record: a frozen dataclass's __init__ costs
# 0.65 µs against 0.15 µs, paid for every message in the fetch thread.
@dataclass(slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"
