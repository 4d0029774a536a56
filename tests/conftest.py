"""Shared fixtures: one real Kafka broker per test session, unique topic names, shared data."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # test helper modules (kafkakit)

# Without an NVIDIA driver the CUDA backend's tests run its kernels in numba's CUDA simulator;
# numba reads this when it is first imported, so it must be set before anything imports numba.
if "NUMBA_ENABLE_CUDASIM" not in os.environ and not Path("/dev/nvidiactl").exists():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

# Workers announce their metrics endpoints for `dawnstream ui` (streams.endpoints): the tests' workers do it in a
# directory of their own, never in the user's.
if "DAWNSTREAM_RUN_DIR" not in os.environ:
    import tempfile

    os.environ["DAWNSTREAM_RUN_DIR"] = tempfile.mkdtemp(prefix="dawnstream-test-run-")

# Hypothesis: derandomized, no example database (``make test``), or fresh and larger (``make fuzz``): propkit.
import propkit  # noqa: E402 - after the path insert above

propkit.load_profile()

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real broker: reuse one that answers, else start ours (and stop it after).

    ``DAWNSTREAM_KAFKA_BOOTSTRAP`` picks the address (default 127.0.0.1:9092). The topics the session
    created are deleted at its end: a reused broker had kept 8,400 test partitions, whose heap (~36 KB
    each) took its live set from 150 to 450 MB and its collections to 100-500 ms pauses (its GC log).
    """
    from dawnstream.broker import BrokerManager, kafka_answers

    addr = os.environ.get("DAWNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    if kafka_answers(addr):
        before = _topics(addr)
        try:
            yield addr
        finally:
            _drop_new_topics(addr, before)
        return
    port = int(addr.rsplit(":", 1)[1])
    mgr = BrokerManager(port=port)
    mgr.start(timeout_s=180)
    before = _topics(mgr.bootstrap)  # its home (and topics) outlive it
    try:
        yield mgr.bootstrap
    finally:
        _drop_new_topics(mgr.bootstrap, before)
        mgr.stop()


def _topics(addr: str) -> set[str]:
    from dawnstream.streams.kafka_clients import TopicAdmin

    return set(TopicAdmin(addr).list_topics())


def _drop_new_topics(addr: str, before: set[str]) -> None:
    """Delete the topics that are on the broker now and were not at the session's start."""
    from dawnstream.streams.kafka_clients import TopicAdmin

    try:
        TopicAdmin(addr).delete(sorted(_topics(addr) - before), timeout_s=120)
    except Exception as e:  # noqa: BLE001 - cleanup must not turn a green session red
        print(f"could not delete this session's topics: {e}", file=sys.stderr)


@pytest.fixture
def topic_name() -> object:
    """Factory of unique topic names ``test.<tag>-<uuid>.<event>.v1``."""

    def make(event: str = "rows", tag: str = "t") -> str:
        return f"test.{tag}-{uuid.uuid4().hex[:10]}.{event}.v1"

    return make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (tests needing it are skipped with a message when it is absent)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} is absent")
    return SHARED


@pytest.fixture
def reader(kafka_bootstrap: str) -> Callable[..., list]:
    # Imported here: the accel tests also run where no Kafka client is installed (the GPU machine).
    from kafkakit import read_all

    return lambda topic, expected=None, **kw: read_all(kafka_bootstrap, topic, expected, **kw)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything under tests/kafka talks to the real broker.
    for item in items:
        if "tests/kafka" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.kafka)
