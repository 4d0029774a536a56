"""Replay a video file (or ``vtest``) to a camera's frames topic: one JPEG per message, as a camera would.

Each frame becomes a row of the ``frames`` codec (key = camera id; headers ``frame-index``,
``timestamp`` in ms from the video's start plus ``start_ms``, ``size``, ``content-type``), encoded by
that codec, so a replayed file and a live camera look the same to the workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
from confluent_kafka import KafkaError, Producer

from dawnstream.errors import DawnstreamError
from dawnstream.streams.kafka_clients import base_settings, producer_settings
from dawnstream.streams.replay import ReplayStats
from dawnstream.topics.codecs.frames import FramesCodec

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg")


def is_video(source: str) -> bool:
    """True for ``vtest`` and paths with a video suffix."""
    return source == "vtest" or Path(source).suffix.lower() in VIDEO_SUFFIXES


def replay_video(source: str, topic: str, camera: str | None = None, bootstrap: str | None = None,
                 rate: float | None = None, limit: int | None = None, quality: int = 90, start_ms: int | None = None,
                 start: int = 0,
                 progress: Callable[[int], None] | None = None) -> ReplayStats:
    """Produce the frames of ``source`` (a video path, or ``vtest``) to ``topic`` and wait for every ack.

    Args:
        camera: the camera id (message key); default the file's stem.
        rate: frames/s ceiling (default: as fast as possible).
        limit: only the frames before index ``limit``.
        start: the first frame index sent (the frames before it are read and skipped).
        quality: JPEG quality (1-100).
        start_ms: timestamp of frame 0 (default: now).

    Raises:
        DawnstreamError: the video cannot be read, or frames were not delivered.
    """
    from dawnstream.video_source import jpeg, read_frames, vtest

    path = vtest() if source == "vtest" else Path(source)
    t_start = int(time.time() * 1000) if start_ms is None else int(start_ms)
    frames = ((index, t_start + ts, jpeg(frame, quality)) for index, ts, frame in read_frames(path, start=start,
                                                                                            stop=limit))
    stats = produce_frames(frames, topic, camera or path.stem, bootstrap, rate, progress)
    if stats.messages == 0:
        raise DawnstreamError(f"{path}: no frames read")
    return stats


def produce_frames(frames: Iterable[tuple[int, int, bytes]], topic: str, camera: str, bootstrap: str | None = None,
                   rate: float | None = None, progress: Callable[[int], None] | None = None) -> ReplayStats:
    """Produce ``(frame index, timestamp ms, JPEG/PNG bytes)`` frames, in the order given, as the frames
    codec's messages (key = ``camera``), and wait for every ack.

    Raises:
        DawnstreamError: frames were not delivered.
    """
    codec = FramesCodec()
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(err.str())

    producer = Producer(producer_settings(base_settings(bootstrap), on_delivery=on_delivery,
                                          **{"delivery.report.only.error": True, "message.max.bytes": 16 << 20}))
    sent = nbytes = 0
    t0 = time.perf_counter()
    for index, ts, image in frames:
        enc = codec.encode(pa.record_batch({"camera_id": [camera], "frame_index": [index], "timestamp_ms": [ts],
                                            "image": pa.array([image], pa.binary())}))
        headers: Any = enc.record_headers[0] if enc.record_headers else None
        while True:
            try:
                producer.produce(topic, enc.values[0], camera.encode(), headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
        nbytes += len(enc.values[0])
        sent += 1
        producer.poll(0)
        if progress is not None:
            progress(1)
        if rate:
            ahead = sent / rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
    remaining = producer.flush(120)
    if remaining or errors:
        raise DawnstreamError(f"{remaining} frame(s) not delivered to {topic}; errors: {errors[:5]}")
    return ReplayStats(sent, sent, nbytes, time.perf_counter() - t0)
