"""Calls in flight per endpoint x model across the gateway's workers, so that a concurrency cap holds for them all.

A small file under the spool directory, mapped by every worker: one row of counters per worker
slot, one counter per bucket (a stable hash of endpoint and model; a shared bucket only makes a
cap bite early), then one per tenant's open WebSockets (a stable hash of its id, likewise), and one more for the
gateway's open WebSockets. A worker writes its own row alone, so counting up and down takes no lock; a
worker taking a slot of a capped endpoint holds an flock-style record lock on the bucket while it
sums the rows and counts itself in, so two workers never both take the last slot. A worker
zeroes its row when it starts: what its predecessor in the slot counted ended with it.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import zlib
from pathlib import Path

BUCKETS = 4096
SOCKETS = BUCKETS - 1          # the last counter: open WebSockets
TENANT_SOCKETS = 256           # the counters before it: open WebSockets per tenant (a stable hash of its id)
PAIRS = SOCKETS - TENANT_SOCKETS     # endpoint x model pairs hash below those
_INT = 4


class SharedInflight:
    """One worker's view of the shared counters: `take` (capped) or `add`, then `give` back."""

    def __init__(self, path: Path, worker: int, workers: int) -> None:
        if not 1 <= worker <= workers:
            raise ValueError(f"worker {worker} is not one of 1..{workers}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        size = workers * BUCKETS * _INT
        if os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)
        self._map = mmap.mmap(self.fd, size)
        self.counts = memoryview(self._map).cast("i")
        self.row = (worker - 1) * BUCKETS
        self.counts[self.row:self.row + BUCKETS] = memoryview(bytes(BUCKETS * _INT)).cast("i")
        self._buckets: dict[tuple[str, str], int] = {}

    def bucket(self, endpoint_id: str, model_id: str) -> int:
        key = (endpoint_id, model_id)
        found = self._buckets.get(key)
        if found is None:
            found = self._buckets[key] = zlib.crc32(f"{endpoint_id}\0{model_id}".encode()) % PAIRS
        return found

    @staticmethod
    def tenant_bucket(tenant_id: str) -> int:
        """The counter of a tenant's open WebSockets (two tenants sharing one only makes their bound bite early)."""
        return PAIRS + zlib.crc32(tenant_id.encode()) % TENANT_SOCKETS

    def count(self, endpoint_id: str, model_id: str) -> int:
        """Calls in flight on this endpoint and model in every worker."""
        return self.count_at(self.bucket(endpoint_id, model_id))

    def count_at(self, b: int) -> int:
        counts = self.counts
        return sum(counts[w * BUCKETS + b] for w in range(self.workers))

    def take(self, endpoint_id: str, model_id: str, cap: int) -> bool:
        """Count one more call unless every worker together already has `cap` in flight; whether it was counted."""
        return self.take_at(self.bucket(endpoint_id, model_id), cap)

    def take_at(self, b: int, cap: int) -> bool:
        """Count one more in counter `b` unless every worker together already has `cap` there."""
        fcntl.lockf(self.fd, fcntl.LOCK_EX, _INT, b * _INT)
        try:
            if self.count_at(b) >= cap:
                return False
            self.counts[self.row + b] += 1
            return True
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, _INT, b * _INT)

    def give_at(self, b: int) -> None:
        self.counts[self.row + b] -= 1

    def add(self, endpoint_id: str, model_id: str) -> None:
        """Count one more call (no cap to respect)."""
        self.counts[self.row + self.bucket(endpoint_id, model_id)] += 1

    def give(self, endpoint_id: str, model_id: str) -> None:
        """A call counted here has finished."""
        self.counts[self.row + self.bucket(endpoint_id, model_id)] -= 1

    def close(self) -> None:
        self.counts.release()
        self._map.close()
        os.close(self.fd)
