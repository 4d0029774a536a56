"""State stores: how an operator's state lies in its partition's changelog.

Two layouts behind one interface (the split of Quix Streams' ``quixstreams/state/base/``):

- the **snapshot blob** (what every stateful operator has: ``snapshot()`` / ``restore()`` bytes,
  all stages of a partition in one record ``p<p>``, JSON with base64 - never pickle). Simple, and
  fine for sketches and reservoirs of a few MB; one record is capped at 16 MiB.
- a **keyed store** (:class:`KeyedStore`): one record per key, ``p<p>/<stage>/<key>``, written at a
  checkpoint only when the key changed since the last one, a tombstone when it was deleted. The
  changelog is compacted, so it keeps the latest value of every key; a restore reads record by
  record, so the state can grow far past one message (per-user weights, per-camera frames,
  per-item labels) and restores incrementally.

An operator opts in by setting ``keyed_state = True``; the processor then gives each partition's
instance its own store as ``operator.store`` before the first batch, and the runner writes and
restores its records with the snapshot blob, in the same transaction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, MutableMapping

MAX_VALUE_BYTES = 15 << 20
"""Largest value of one key (the changelog's 16 MiB message limit, less room for the key and headers)."""


class Store(ABC):
    """State of one stage of one partition, as changelog records."""

    @abstractmethod
    def changes(self) -> list[tuple[bytes, bytes | None]]:
        """Records the next checkpoint must write (``(key, value)``, ``value`` None to delete), relative
        to this store's prefix; the store then counts them as written."""

    @abstractmethod
    def apply(self, key: bytes, value: bytes | None) -> None:
        """Restore one record read back from the changelog (later records win)."""


class KeyedStore(Store, MutableMapping[str, bytes]):
    """A ``dict`` of ``str -> bytes`` whose changes are checkpointed key by key.

    >>> s = KeyedStore()
    >>> s["user:7"] = b"weights"
    >>> s.changes()
    [(b'user:7', b'weights')]
    >>> del s["user:7"]
    >>> s.changes()
    [(b'user:7', None)]
    >>> s.changes()
    []

    Raises:
        ValueError: a value larger than :data:`MAX_VALUE_BYTES` (split it over several keys).
        TypeError: a key that is not ``str`` or a value that is not ``bytes``.
    """

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._dirty: set[str] = set()

    def __getitem__(self, key: str) -> bytes:
        return self._data[key]

    def __setitem__(self, key: str, value: bytes) -> None:
        if not isinstance(key, str) or not isinstance(value, (bytes, bytearray)):
            raise TypeError("a keyed store maps str keys to bytes values")
        if len(value) > MAX_VALUE_BYTES:
            raise ValueError(f"value of {len(value)} bytes for key {key!r} exceeds {MAX_VALUE_BYTES} bytes: "
                             "split it over several keys")
        self._data[key] = bytes(value)
        self._dirty.add(key)

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self._dirty.add(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def changes(self) -> list[tuple[bytes, bytes | None]]:
        out = [(k.encode(), self._data.get(k)) for k in sorted(self._dirty)]
        self._dirty.clear()
        return out

    def apply(self, key: bytes, value: bytes | None) -> None:
        k = key.decode()
        if value is None:
            self._data.pop(k, None)
        else:
            self._data[k] = value
        self._dirty.discard(k)
