"""Pick and build a backend for a program: ``off`` | ``cpu`` | ``gpu`` | ``auto``.

``auto`` is the GPU when numba finds a real CUDA device and the CPU otherwise (the simulator,
``NUMBA_ENABLE_CUDASIM=1``, is used only when ``gpu`` is asked for); ``gpu`` without a device raises with what to do.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np

from dawnstream.accel.ir import Program, ScanState

AccelMode = Literal["off", "cpu", "gpu", "auto"]
MODES = ("off", "cpu", "gpu", "auto")


class Executable(Protocol):
    """A compiled program: ``run(columns, params, state) -> {output: value}``."""

    backend: str

    def run(self, columns: dict[str, np.ndarray], params: dict[str, float] | None = None,
            state: ScanState | None = None, n: int | None = None) -> dict[str, Any]: ...


def gpu_available(simulator_ok: bool = True) -> bool:
    """True when numba.cuda has a device (a simulated one counts unless ``simulator_ok`` is False)."""
    try:
        from numba import config, cuda

        if getattr(config, "ENABLE_CUDASIM", 0) and not simulator_ok:
            return False
        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken CUDA install means no GPU, not a crash
        return False


def resolve(mode: str) -> str:
    """The backend ``mode`` means on this machine: ``off``, ``cpu`` or ``gpu``.

    Raises:
        ValueError: unknown mode, or ``gpu`` without a CUDA device."""
    if mode not in MODES:
        raise ValueError(f"accel must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        # The simulator runs kernels in Python threads: fine for tests, never chosen automatically.
        return "gpu" if gpu_available(simulator_ok=False) else "cpu"
    if mode == "gpu" and not gpu_available():
        raise ValueError("accel: gpu needs a CUDA device (none found by numba.cuda); use accel: auto or cpu")
    return mode


class ReferenceExecutable:
    """The program run by the numpy reference (:func:`~dawnstream.accel.reference.run_reference`): what a
    stage runs when its kernel cannot be compiled (no room or no write access for the kernel cache)."""

    backend = "off"

    def __init__(self, program: Program) -> None:
        self.program = program

    def run(self, columns: dict[str, np.ndarray], params: dict[str, float] | None = None,
            state: ScanState | None = None, n: int | None = None) -> dict[str, Any]:
        from dawnstream.accel.reference import run_reference

        return run_reference(self.program, columns, params, state)


_WARNED: set[str] = set()


def build(program: Program, mode: str) -> Executable:
    """Compile ``program`` for ``mode`` (``cpu``/``gpu``/``auto``).

    A CPU kernel whose cache cannot be written (a full disk, a read-only home: ``OSError``) runs
    uncompiled instead (:class:`ReferenceExecutable`, the same results, slower), with one warning per
    cause in the log: a worker must not stop because its cache has no room.

    Raises:
        ValueError: as :func:`resolve`.
    """
    backend = resolve(mode)
    if backend == "gpu":
        from dawnstream.accel.cuda import CudaExecutable

        return CudaExecutable(program)
    from dawnstream.accel.cpu import CpuExecutable

    try:
        return CpuExecutable(program)
    except OSError as e:
        why = f"{type(e).__name__}: {e}"
        if why not in _WARNED:
            _WARNED.add(why)
            import logging

            from dawnstream.logs import event, get_logger

            event(get_logger(__name__), "accel.uncompiled", level=logging.WARNING, error=why,
                  hint="free space under $DAWNSTREAM_CACHE (or point it elsewhere); stages run uncompiled meanwhile")
        return ReferenceExecutable(program)
