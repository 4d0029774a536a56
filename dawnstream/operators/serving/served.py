"""The predictions a ``predict`` stage served, kept by correlation-id until their feedback arrives.

Feedback may come minutes or days after its request, on another topic (Clipper, NSDI'17, section 5:
the selection policy learns from the prediction that was *served*; Velox, CIDR'15, section 4: the
online weights from the features the request was answered with). So each answered request leaves a
record in the stage's keyed store - ``served/<correlation-id>`` -> JSON of its event time, key, every
model's answer, the answer sent, and (Exp3) the arm drawn and its probability - and the feedback that names that
correlation-id reads it back, once. The record then becomes a tombstone, so a second piece of feedback
for the same request is recognised as a duplicate; records and tombstones older than the TTL (event
time: the Kafka timestamps of the messages) are deleted. Everything is in the keyed store, so the
runner's checkpoints keep it with the partition's offsets: a worker killed with feedback outstanding
resumes with every served record it had.

>>> log = ServedLog(ttl_ms=60_000, store={})
>>> log.record("c1", 1_000, "alice", {"m": [0.2, 0.8]}, "exp4", 1.0, [0.2, 0.8])
>>> log.lookup("c1", 2_000)[0]["a"]
{'m': [0.2, 0.8]}
>>> log.consume("c1", 2_000); log.lookup("c1", 3_000)[1]
'feedback for correlation-id c1 was already applied (a duplicate)'
>>> log.lookup("c9", 3_000)[1]
'no prediction was served for correlation-id c9 within the feedback TTL of 60 s of event time (unknown, or expired)'
"""

from __future__ import annotations

import heapq
from collections.abc import MutableMapping
from typing import Any

import orjson

PREFIX = "served/"


class ServedLog:
    """Served predictions by correlation-id, with a time to live.

    Args:
        ttl_ms: how long a served record waits for its feedback (event time, ms).
        store: the keyed store (a runner's :class:`~dawnstream.streams.store.KeyedStore`, or a dict).
    """

    def __init__(self, ttl_ms: int, store: MutableMapping[str, bytes] | None = None) -> None:
        self.ttl_ms = int(ttl_ms)
        self.store: MutableMapping[str, bytes] = store if store is not None else {}
        self._heap: list[tuple[int, str]] = []
        self._scanned = False
        self.expired = 0
        self.watermark = -(2**62)
        """The largest event time seen (ms), kept by the stage with its state."""

    def attach(self, store: MutableMapping[str, bytes]) -> None:
        """Use ``store`` (after a restore): the expiry index is rebuilt from it on the next :meth:`expire`."""
        if store is not self.store:
            self.store = store
            self._heap = []
            self._scanned = False

    def forget_index(self) -> None:
        """Rebuild the expiry index from the store on the next :meth:`expire` (after a restore)."""
        self._heap = []
        self._scanned = False

    def record(self, cid: str, t_ms: int, key: str | None, answers: dict[str, list[float]], model: str,
               probability: float, served: list[float], features: dict[str, Any] | None = None) -> None:
        """Keep what request ``cid`` was answered with: each model's answer, the policy's pick (``model``,
        drawn with ``probability``), the answer sent (``served``), and the request's ``features`` when some
        model missed the SLO (it is asked at feedback time). A retried request replaces its record."""
        rec = {"t": int(t_ms), "k": key, "a": answers, "m": model, "p": float(probability), "s": served}
        if features is not None:
            rec["x"] = features
        self.store[PREFIX + cid] = orjson.dumps(rec)
        heapq.heappush(self._heap, (int(t_ms), cid))

    def lookup(self, cid: str, t_ms: int) -> tuple[dict[str, Any] | None, str | None]:
        """``(record, None)`` for feedback at ``t_ms``, or ``(None, why it cannot be applied)``. Changes nothing."""
        data = self.store.get(PREFIX + cid)
        return self.check(orjson.loads(data) if data is not None else None, cid, t_ms)

    def check(self, rec: dict[str, Any] | None, cid: str, t_ms: int) -> tuple[dict[str, Any] | None, str | None]:
        """:meth:`lookup` on a record already read (or None)."""
        # Expired and already deleted read the same: whether :meth:`expire` ran yet depends on batch cuts.
        if rec is None or t_ms - int(rec["t"]) > self.ttl_ms:
            return None, (f"no prediction was served for correlation-id {cid} within the feedback TTL of "
                          f"{self.ttl_ms / 1000:g} s of event time (unknown, or expired)")
        if rec.get("used"):
            return None, f"feedback for correlation-id {cid} was already applied (a duplicate)"
        return rec, None

    def consume(self, cid: str, t_ms: int) -> None:
        """Mark ``cid``'s feedback applied: the record becomes a tombstone until the TTL."""
        data = self.store.get(PREFIX + cid)
        t = int(orjson.loads(data)["t"]) if data is not None else int(t_ms)
        self.store[PREFIX + cid] = orjson.dumps({"t": t, "used": True})

    def expire(self, now_ms: int) -> int:
        """Delete records and tombstones older than the TTL at event time ``now_ms``; returns how many."""
        if not self._scanned:
            for k in list(self.store):
                if k.startswith(PREFIX):
                    self._heap.append((int(orjson.loads(self.store[k])["t"]), k[len(PREFIX):]))
            heapq.heapify(self._heap)
            self._scanned = True
        gone = 0
        limit = now_ms - self.ttl_ms
        heap = self._heap
        while heap and heap[0][0] < limit:
            t, cid = heapq.heappop(heap)
            data = self.store.get(PREFIX + cid)
            if data is not None and int(orjson.loads(data)["t"]) == t:
                del self.store[PREFIX + cid]
                gone += 1
        self.expired += gone
        return gone
