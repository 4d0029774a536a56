"""Hypothesis settings for the property tests: reproducible in ``make test``, fresh and larger in ``make fuzz``.

``make test`` loads the ``ci`` profile (``tests/conftest.py``): derandomized (the examples are a
function of the test and the pinned Hypothesis version), no example database, so a run on any
machine tries the same inputs and cannot fail on an input no other run tried. Counterexamples
found by ``make fuzz`` are pinned with ``@example(...)`` next to the test.

``make fuzz`` loads the ``fuzz`` profile: fresh randomness, the local example database under
``.hypothesis/`` (failures are replayed first next time), and :func:`examples` multiplies every
test's example count by ``DAWNSTREAM_FUZZ_FACTOR``.
"""

from __future__ import annotations

import os

from hypothesis import settings

PROFILE_ENV = "DAWNSTREAM_HYPOTHESIS_PROFILE"
FACTOR_ENV = "DAWNSTREAM_FUZZ_FACTOR"

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("fuzz", derandomize=False, print_blob=True)


def load_profile() -> str:
    """Load the profile named by ``$DAWNSTREAM_HYPOTHESIS_PROFILE`` (default ``ci``); returns its name.

    Raises:
        ValueError: an unknown profile name.
    """
    name = os.environ.get(PROFILE_ENV, "ci")
    if name not in ("ci", "fuzz"):
        raise ValueError(f"{PROFILE_ENV}={name!r}: expected ci or fuzz")
    settings.load_profile(name)
    return name


def examples(n: int) -> int:
    """A test's example count: ``n`` under ``ci``; ``n`` times ``$DAWNSTREAM_FUZZ_FACTOR`` (default 10) under
    ``fuzz``."""
    if os.environ.get(PROFILE_ENV, "ci") != "fuzz":
        return n
    return n * max(1, int(os.environ.get(FACTOR_ENV, "10")))
