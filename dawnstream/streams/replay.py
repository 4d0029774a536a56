"""Replay a file or dataset into a topic, as JSON rows (one per message) or Arrow batches."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from confluent_kafka import KafkaError, Producer

from dawnstream.errors import DawnstreamError
from dawnstream.streams.kafka_clients import base_settings, producer_settings
from dawnstream.topics.codecs import get_codec


@dataclass
class ReplayStats:
    """Rows and messages sent, bytes of payload, seconds, and rows/s."""

    rows: int
    messages: int
    bytes: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def replay_table(
    table: pa.Table,
    topic: str,
    fmt: str = "json",
    batch_rows: int = 10_000,
    rate: float | None = None,
    key: str | None = None,
    bootstrap: str | None = None,
    settings: dict[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
    chunk_rows: int = 10_000,
) -> ReplayStats:
    """Produce ``table`` to ``topic`` and wait until every message is acknowledged.

    Args:
        fmt: ``json`` (one row per message) or ``arrow`` (``batch_rows`` rows per message).
        rate: rows/s ceiling (``None`` = as fast as possible).
        key: column whose value is the message key (JSON: per row; Arrow: first row of the batch).
        progress: called with the number of rows just sent.

    Raises:
        DawnstreamError: unknown format, missing key column, or undelivered messages.
    """
    if fmt not in ("json", "arrow"):
        raise DawnstreamError(f"format must be json or arrow, got {fmt!r}")
    if key is not None and key not in table.column_names:
        raise DawnstreamError(f"key column {key!r} not in {table.column_names}")
    codec = get_codec("arrow", max_rows_per_message=batch_rows) if fmt == "arrow" else get_codec("json")
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(err.str())

    producer = Producer(producer_settings(base_settings(bootstrap, settings), on_delivery=on_delivery,
                                          **{"delivery.report.only.error": True}))
    step = batch_rows if fmt == "arrow" else chunk_rows
    rows = messages = nbytes = 0
    t0 = time.perf_counter()
    for batch in table.to_batches(max_chunksize=step):
        enc = codec.encode(batch, key)
        keys = enc.keys
        headers: Any = enc.headers
        for i, value in enumerate(enc.values):
            k = keys[i] if keys is not None else None
            while True:
                try:
                    producer.produce(topic, value, k, headers=headers)
                    break
                except BufferError:
                    producer.poll(0.05)
            nbytes += len(value)
        messages += len(enc)
        producer.poll(0)
        rows += batch.num_rows
        if progress is not None:
            progress(batch.num_rows)
        if rate:
            ahead = rows / rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
    remaining = producer.flush(120)
    seconds = time.perf_counter() - t0
    if remaining or errors:
        raise DawnstreamError(f"{remaining} message(s) not delivered to {topic}; errors: {errors[:5]}")
    return ReplayStats(rows, messages, nbytes, seconds)
