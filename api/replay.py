"""Signatures already used, kept exactly as long as they could still be accepted.

A signature is valid only while its timestamp is within the allowed clock skew, so
remembering it until ``ts + skew`` is enough to refuse every replay, and the memory
needed is bounded by the request rate times the skew window. The cache never evicts an
entry that is still live (that would re-open the replay it guards against); when it is
full of live entries it refuses new signatures instead (:class:`ReplayCacheFullError`).
"""

from __future__ import annotations

import heapq
import threading


class ReplayCacheFullError(RuntimeError):
    """More signed requests within one skew window than the cache may hold."""


class ReplayCache:
    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def first_use(self, sig: str, expires_at: float, now: float) -> bool:
        """Record ``sig``; False if it was seen before (a replay)."""
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                _, old = heapq.heappop(self._heap)
                if self._expiry.get(old, now + 1) <= now:
                    del self._expiry[old]
            if sig in self._expiry:
                return False
            if len(self._expiry) >= self.max_entries:
                raise ReplayCacheFullError(f"{len(self._expiry)} signatures are still live")
            self._expiry[sig] = expires_at
            heapq.heappush(self._heap, (expires_at, sig))
            return True
