"""The unit the consumer hands on: one Kafka message with its coordinates."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
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
