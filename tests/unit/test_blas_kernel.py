"""The BLAS kernel the bit-exact tests ran under is the one asked for: `make test` reruns them with
``OPENBLAS_CORETYPE`` set, and a guard that silently kept the default kernel would prove nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.bitexact

PROBE = ("import numpy as np; from threadpoolctl import threadpool_info; np.ones((4, 4)) @ np.ones((4, 4)); "
         "print(sorted({str(i.get('architecture')) for i in threadpool_info() "
         "if i.get('internal_api') == 'openblas'}))")


def kernel(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def test_openblas_coretype_switches_numpy_to_another_kernel() -> None:
    wanted = os.environ.get("OPENBLAS_CORETYPE")
    if not wanted:
        pytest.skip("OPENBLAS_CORETYPE is not set: this run uses the machine's default kernel")
    here = kernel(dict(os.environ))
    default = kernel({k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")})
    assert here != "[]", "numpy does not run on OpenBLAS here: the BLAS-kernel guard cannot switch kernels"
    if wanted.lower() in default.lower():
        pytest.skip(f"{wanted} is this machine's default kernel")
    assert here != default, f"OPENBLAS_CORETYPE={wanted} left numpy on its default kernel {default}"
