"""The one in-process cache of the service: a bounded mapping whose entries expire.

Each process keeps its own; entries live a few seconds, so a change made elsewhere reaches
every process within that time (callers that must see a change at once clear it)."""

import threading
import time
from collections import OrderedDict
from typing import Any

MAX_ENTRIES = 50_000


class TtlCache:
    """A bounded mapping whose entries expire `ttl` seconds after they were stored."""

    def __init__(self, ttl: float, max_entries: int = MAX_ENTRIES):
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        # gthread workers share the cache between threads: writes and evictions under a
        # lock (a read of a live entry needs none).
        self._lock = threading.Lock()

    def get(self, key, loader, none_ttl: float | None = None, now: float | None = None):
        """The value for `key`, loaded when missing or stale. A None (nothing found) is
        kept `none_ttl` seconds instead, when given (0: not kept). `now`, in seconds, is
        the caller's clock where the caller has one (the process's monotonic clock
        otherwise)."""
        now = time.monotonic() if now is None else now
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        value = loader()
        ttl = none_ttl if value is None and none_ttl is not None else self.ttl
        if ttl <= 0:
            return value
        with self._lock:
            self._entries[key] = (now + ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
