"""Fault tests are kafka- and slow-marked."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.kafka)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_orphan_workers() -> object:
    import faultkit

    yield
    faultkit.kill_all()
