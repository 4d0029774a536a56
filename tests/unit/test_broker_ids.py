"""KRaft cluster ids handed to Kafka's storage tool."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

from dawnstream.broker import new_cluster_id


def test_kraft_cluster_ids_never_look_like_an_option() -> None:
    # 0xF8... encodes to "-AAA...": the storage tool read such an id as a flag (a real CI failure).
    dash, plain = SimpleNamespace(bytes=bytes([0xF8]) + bytes(15)), SimpleNamespace(bytes=bytes(16))
    with mock.patch("uuid.uuid4", side_effect=[dash, plain]):
        assert new_cluster_id() == "AAAAAAAAAAAAAAAAAAAAAA"
    assert all(not new_cluster_id().startswith("-") for _ in range(2000))
