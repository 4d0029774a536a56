"""Compile every CUDA kernel the GPU backend launches to PTX, without a GPU.

The simulator tests (``tests/unit/test_accel_cuda.py``) run the generated kernels as Python, which
hides what the real CUDA target cannot compile (found this way: ``math.copysign`` has no NVVM
intrinsic; ``min(int64, int64)`` fails to type). This script closes that gap where no GPU is lent:

1. in a subprocess with ``NUMBA_ENABLE_CUDASIM=1``, run random accel programs (the property-test
   strategy), the MAD chain, the tile-edge program, the radix selects of every dtype and the
   wired operators, recording each kernel launch's argument types;
2. here, without the simulator, compile each recorded (kernel, types) to PTX with NVVM.

Needs NVVM and the CUDA runtime library under ``CUDA_HOME`` (``nvvm/lib64/libnvvm.so*``,
``nvvm/libdevice``, ``lib64/libcudart.so.12``), e.g. unpacked from the nvidia-cuda-nvcc-cu12 and
nvidia-cuda-runtime-cu12 wheels. Usage::

    CUDA_HOME=/path/to/cuda python tests/tools/cuda_ptx_check.py [--examples 25] [--cc 8.0]

Prints one JSON object: signatures recorded, compiled, each failure with numba's message, and each
kernel whose PTX holds a fused float multiply-add (``fma.rn.f32/f64``: fmath rule 1 forbids them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RECORD = r'''
import json, sys, warnings
sys.path[:0] = [{tests!r}, {unit!r}]
warnings.simplefilter("ignore")
import numba
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from numba.cuda.simulator import kernel as simk
from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

seen = {{}}
orig = simk.FakeCUDAKernel.__getitem__

def getitem(self, cfg):
    launch = orig(self, cfg)
    def run(*args):
        tys = tuple(str(numba.typeof(a._ary if isinstance(a, FakeCUDAArray) else a)) for a in args)
        seen.setdefault((self.fn.__module__, self.fn.__name__, tys), None)
        return launch(*args)
    return run

simk.FakeCUDAKernel.__getitem__ = getitem

import test_accel_cuda as t
from accelkit import SMALL_SIZES, programs
from dawnstream.accel.cuda import CudaExecutable
from dawnstream.accel.examples import mad_chain
from dawnstream.accel.ir import ScanState

@settings(max_examples={examples}, deadline=None, phases=[Phase.generate], database=None,
          suppress_health_check=list(HealthCheck))
@given(programs(sizes=SMALL_SIZES, max_ops=4))
def run(case):
    prog, data = case
    try:
        CudaExecutable(prog).run(data, state=ScanState())
    except ValueError:
        pass

run()
rng = np.random.default_rng(0)
CudaExecutable(mad_chain()).run({{"x": rng.normal(size=70).astype(np.float32), "cat": rng.integers(0, 64, 70)}})
CudaExecutable(t._edge_program()).run({{"x": rng.normal(size=70), "k": rng.integers(0, 4, 70)}})
from dawnstream.accel.ir import Filter, Map, Program, cast, col, const, ref, unary
x32 = col("x", "float32")
f = lambda v: const(v, "float32")
y = (x32 * f(1.5) + f(2.0)) / (abs(x32) + f(1.0))  # the benchmark's elementwise map: a * b + c in float32
CudaExecutable(Program([Map("y", y), Map("e", unary("exp", x32) * f(3.0) + unary("log10", x32)),
                        Map("i", cast(x32 * f(1e9), "int32")),
                        Filter("keep", ref("y") > f(0.0), (("y_kept", ref("y")),))], {{"x": "float32"}})).run(
    {{"x": rng.normal(size=70).astype(np.float32)}})
for dt in ["float64", "float32", "int64", "int32", "int8", "bool"]:
    t.test_device_radix_select_equals_numpy(dt)
for dt in ["float64", "float32", "int64", "int32"]:
    t.test_radix_select_finishes_on_the_device_when_one_bucket_holds_everything(dt)
t.test_accel_gpu_wires_into_the_fused_stages_and_the_mad_classifier()
json.dump([list(k) for k in seen], open({out!r}, "w"))
'''


def record(examples: int, out: Path) -> None:
    code = RECORD.format(tests=str(ROOT / "tests"), unit=str(ROOT / "tests" / "unit"), examples=examples, out=str(out))
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


def compile_all(launches: list, cc: tuple[int, int]) -> dict:
    import numba.cuda.api as capi
    import numba.cuda.dispatcher as cdisp
    from numba import cuda
    from numba.core import types as nt

    class NoDevice:  # device functions ask the current device for its capability; answer for it
        compute_capability = cc

    capi.get_current_device = cdisp.get_current_device = lambda: NoDevice()  # type: ignore[assignment]
    from dawnstream.accel.cpu import cache_dir
    from dawnstream.accel.cuda_kernels import kernels

    fixed = kernels(32)

    def scalar(name: str):  # type: ignore[no-untyped-def]
        return nt.boolean if name == "bool" else getattr(nt, name)

    def typ(text: str):  # type: ignore[no-untyped-def]
        if not text.startswith("array("):
            return scalar(text)
        dtype, _ndim, layout = (p.strip(" )") for p in text[6:].split(","))
        return nt.Array(scalar(dtype), 1, layout)

    failed = []
    fused = []
    for mod, name, tys in launches:
        if mod.startswith("dawnstream_accel_k"):
            path = cache_dir() / (mod.removeprefix("dawnstream_accel_") + ".py")
            spec = importlib.util.spec_from_file_location(mod, path)
            assert spec is not None and spec.loader is not None
            m = importlib.util.module_from_spec(spec)
            sys.modules[mod] = m
            spec.loader.exec_module(m)
            fn = getattr(m, name).py_func
        else:
            fn = fixed[name].py_func
        try:
            ptx, _ = cuda.compile_ptx(fn, tuple(typ(t) for t in tys), cc=cc)
        except Exception as e:  # noqa: BLE001 - report every failure, keep going
            failed.append({"kernel": f"{mod}.{name}", "types": tys, "error": str(e)[:600]})
            continue
        # fmath rule 1: no float multiply-add may be fused (it rounds once where the reference rounds twice).
        n_fma = ptx.count("fma.rn.f32") + ptx.count("fma.rn.f64")
        if n_fma:
            fused.append({"kernel": f"{mod}.{name}", "types": tys, "fma": n_fma})
    return {"signatures": len(launches), "compiled": len(launches) - len(failed), "failed": failed,
            "fused_multiply_adds": fused}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=25, help="random programs to record")
    ap.add_argument("--cc", default="8.0", help="compute capability to compile for")
    args = ap.parse_args()
    if "NUMBA_ENABLE_CUDASIM" in os.environ:
        sys.exit("run without NUMBA_ENABLE_CUDASIM: this process compiles for the real CUDA target")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "launches.json"
        record(args.examples, out)
        launches = json.loads(out.read_text())
    major, minor = (int(x) for x in args.cc.split("."))
    print(json.dumps(compile_all(launches, (major, minor)), indent=2))


if __name__ == "__main__":
    main()
