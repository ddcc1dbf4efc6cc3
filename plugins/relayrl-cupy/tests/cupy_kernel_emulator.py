"""Runs the CUDA source of relayrl-cupy on the CPU: compiled as C++ by the host compiler.

Each ``__global__`` kernel gets a host wrapper that loops over every block and thread of the
grid (including the threads past the end, which the kernels must ignore), with ``blockIdx``,
``blockDim`` and ``threadIdx`` set as CUDA would. :class:`EmulatedKernels` launches them through
the same argument marshalling as :class:`relayrl_cupy.CupyKernels` (:class:`FusedKernels`), on
numpy arrays, so the kernels' arithmetic and indexing are tested on machines without a GPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from array_api_compat import array_namespace
from relayrl_cupy import CUDA_SOURCE, FusedKernels

__all__ = ["CXX", "EmulatedKernels", "emulator_source"]

#: The host C++ compiler, or None (the emulation tests skip without one).
CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")

_PRELUDE = """
#include <math.h>
#define __global__
#define __device__
#define __forceinline__ inline
struct relayrl_dim3 { unsigned int x; };
static relayrl_dim3 threadIdx, blockIdx, blockDim;
#define RELAYRL_LAUNCH(blocks, threads, call) \\
    for (unsigned int b_ = 0; b_ < (blocks); ++b_) \\
        for (unsigned int t_ = 0; t_ < (threads); ++t_) { \\
            blockIdx.x = b_; threadIdx.x = t_; blockDim.x = (threads); call; }
"""

_KERNEL = re.compile(r'extern "C" __global__ void (\w+)\(([^)]*)\)', re.S)


def emulator_source(source: str = CUDA_SOURCE) -> str:
    """The C++ translation unit: prelude, the CUDA source, one ``launch_<name>`` per kernel."""
    wrappers = []
    for name, params in _KERNEL.findall(source):
        args = [re.findall(r"\w+", p)[-1] for p in params.split(",")]
        wrappers.append(f'extern "C" void launch_{name}(unsigned int blocks, unsigned int threads, {params}) '
                        f"{{ RELAYRL_LAUNCH(blocks, threads, {name}({', '.join(args)})) }}")
    return _PRELUDE + source + "\n" + "\n".join(wrappers) + "\n"


_LIB: ctypes.CDLL | None = None


def _library() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        assert CXX is not None
        src = emulator_source()
        out = Path(tempfile.gettempdir()) / f"relayrl_cupy_emu_{hashlib.sha256(src.encode()).hexdigest()[:16]}.so"
        if not out.exists():
            tmp = out.with_suffix(f".{os.getpid()}.tmp")
            subprocess.run([CXX, "-O1", "-shared", "-fPIC", "-x", "c++", "-", "-o", str(tmp)], input=src.encode(),
                           check=True, capture_output=True)
            tmp.replace(out)
        _LIB = ctypes.CDLL(str(out))
    return _LIB


_SCALARS: dict[type, Any] = {
    np.int32: ctypes.c_int,
    np.int64: ctypes.c_longlong,
    np.float32: ctypes.c_float,
    np.float64: ctypes.c_double,
}


class EmulatedKernels(FusedKernels):
    """:class:`FusedKernels` on numpy arrays, launching the host-compiled CUDA source."""

    def __init__(self) -> None:
        self.xp = array_namespace(np.empty(0))
        self._lib = _library()

    def _launch(self, name: str, size: int, args: tuple[Any, ...]) -> None:
        cargs: list[Any] = [ctypes.c_uint(self._blocks(size)), ctypes.c_uint(self.threads)]
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            else:
                cargs.append(_SCALARS[type(a)](a))
        getattr(self._lib, f"launch_{name}")(*cargs)

    def _contig(self, a: Any, dtype: Any) -> Any:
        return np.ascontiguousarray(a, dtype=dtype)

    def _empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return np.empty(shape, dtype=dtype)
