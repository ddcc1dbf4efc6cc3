"""The compute kernels of the CuPy backend, and their Array API reference implementations.

:class:`ArrayKernels` writes every operation against the Python Array API, so the same code runs
on numpy, ``array-api-strict`` and CuPy arrays; it is the reference the CUDA kernels are tested
against on machines without a GPU. :class:`CupyKernels` runs the same operations as fused CUDA
kernels compiled from :data:`CUDA_SOURCE` with :class:`cupy.RawModule`:

* ``relayrl_bias_act``: bias add and activation, one thread per element (after each matmul);
* ``relayrl_normalize``: observation normalisation ``clip((x - mean) / std, -clip, clip)``;
* ``relayrl_categorical``: one thread per row: masked max, ``exp``, running CDF, inverse-CDF
  draw from a given uniform (or argmax), and the log-probability of the chosen action;
* ``relayrl_gaussian``: one thread per row: ``mean + exp(log_std) * noise``, optional clip
  to the action bounds, and the summed diagonal-Gaussian log-probability.

The kernels use only the C math library (``expf``, ``tanhf``, ``expm1f``, ``logf``) so the
source also compiles as plain C++: the test suite compiles it with a host compiler and checks
it against :class:`ArrayKernels` without a GPU.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import numpy as np

__all__ = ["ACTIVATIONS", "CUDA_SOURCE", "KERNEL_NAMES", "ArrayKernels", "CupyKernels", "FusedKernels", "Kernels"]

#: Activation names (as in the numpy backend's ``.npz`` format) and their codes in the kernels.
ACTIVATIONS: dict[str, int] = {
    "tanh": 0,
    "relu": 1,
    "leaky_relu": 2,
    "elu": 3,
    "sigmoid": 4,
    "silu": 5,
    "identity": 6,
}

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

#: CUDA C source of the fused kernels (all ``float32``; actions ``int64``; masks ``bool``).
CUDA_SOURCE = r"""
#define RELAYRL_HALF_LOG_2PI 0.91893853320467274178f
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ float relayrl_activate(float v, int act) {
    switch (act) {
        case 0: return tanhf(v);
        case 1: return v > 0.0f ? v : 0.0f;
        case 2: return v > 0.0f ? v : v * 0.01f;
        case 3: return v > 0.0f ? v : expm1f(v);
        case 4: return 1.0f / (1.0f + expf(-v));
        case 5: return v / (1.0f + expf(-v));
        default: return v;
    }
}

/* y[i] = act(x[i] + b[i % n]) for a row-major [size / n, n] matrix; y may be x. */
extern "C" __global__ void relayrl_bias_act(
        const float* x, const float* __restrict__ b, float* y,
        const long long size, const int n, const int act) {
    long long i = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    if (i >= size) return;
    y[i] = relayrl_activate(x[i] + b[i % n], act);
}

/* y[i] = clip((x[i] - mean[j]) / std[j], -clip, clip), j = i % n; y may be x. */
extern "C" __global__ void relayrl_normalize(
        const float* x, const float* __restrict__ mean, const float* __restrict__ std_, float* y,
        const long long size, const int n, const float clip) {
    long long i = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    if (i >= size) return;
    int j = (int)(i % n);
    float v = (x[i] - mean[j]) / std_[j];
    y[i] = v < -clip ? -clip : (v > clip ? clip : v);
}

/* One categorical per row over columns [col, col + n) of row-major logits with row stride ld.
   mask (same layout) is read only when has_mask; u[row] in [0, 1) is used only when sample.
   The chosen action is the number of CDF entries below u * total (inverse CDF; masked entries
   add nothing to the CDF so they are never chosen), or the first argmax when !sample. */
extern "C" __global__ void relayrl_categorical(
        const float* __restrict__ logits, const bool* __restrict__ mask, const double* __restrict__ u,
        long long* __restrict__ act, float* __restrict__ logp,
        const int batch, const int ld, const int col, const int n, const int has_mask, const int sample) {
    int row = blockDim.x * blockIdx.x + threadIdx.x;
    if (row >= batch) return;
    const float* l = logits + (long long)row * ld + col;
    const bool* m = mask + (long long)row * ld + col;
    float mx = -INFINITY;
    int arg = 0;
    for (int j = 0; j < n; ++j) {
        if ((!has_mask || m[j]) && l[j] > mx) { mx = l[j]; arg = j; }
    }
    float total = 0.0f;
    for (int j = 0; j < n; ++j) {
        if (!has_mask || m[j]) total += expf(l[j] - mx);
    }
    int a = arg;
    if (sample) {
        double target = u[row] * (double)total;
        float c = 0.0f;
        a = 0;
        for (int j = 0; j < n; ++j) {
            if (!has_mask || m[j]) c += expf(l[j] - mx);
            if ((double)c < target) ++a;
        }
    }
    act[row] = a;
    logp[row] = (l[a] - mx) - logf(total);
}

/* One diagonal Gaussian per row: act = mean + exp(log_std) * noise (noise read only when
   sample), clipped to [low, high] when clip; logp[row] = sum of per-dimension log-densities of
   the returned action. log_std is [d] or, when log_std_per_row, [batch, d]. */
extern "C" __global__ void relayrl_gaussian(
        const float* __restrict__ mean, const float* __restrict__ log_std, const float* __restrict__ noise,
        const float* __restrict__ low, const float* __restrict__ high,
        float* __restrict__ act, float* __restrict__ logp,
        const int batch, const int d, const int log_std_per_row, const int sample, const int clip) {
    int row = blockDim.x * blockIdx.x + threadIdx.x;
    if (row >= batch) return;
    float total = 0.0f;
    for (int j = 0; j < d; ++j) {
        long long k = (long long)row * d + j;
        float ls = log_std[log_std_per_row ? k : j];
        float mu = mean[k];
        float a = sample ? mu + expf(ls) * noise[k] : mu;
        if (clip) a = a < low[j] ? low[j] : (a > high[j] ? high[j] : a);
        float z = (a - mu) * expf(-ls);
        total += -0.5f * z * z - ls - RELAYRL_HALF_LOG_2PI;
        act[k] = a;
    }
    logp[row] = total;
}
"""


def _to_numpy(a: Any) -> np.ndarray[Any, Any]:
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)  # cupy
    if get is not None:
        return np.asarray(get())
    return np.from_dlpack(a)  # array-api-strict and other CPU Array API libraries


class Kernels(abc.ABC):
    """The operations a device policy and a device head need, on one array namespace.

    Every argument and result is an array of :attr:`xp` unless noted. Subclasses replace
    operations with fused kernels; they must compute the same values.
    """

    #: The Array API namespace the arrays belong to.
    xp: Any
    #: Whether results live on an accelerator (so :meth:`to_host` copies).
    on_device: bool = False

    def to_device(self, a: Any, dtype: Any = None) -> Any:
        """Copy a host (or same-namespace) array to the namespace's device, as ``dtype``."""
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a: Any) -> np.ndarray[Any, Any]:
        """The array as a numpy array (copying from the device when there is one)."""
        return _to_numpy(a)

    @abc.abstractmethod
    def bias_act(self, x: Any, b: Any, activation: str) -> Any:
        """``activation(x + b)`` for ``x`` ``[B, n]`` and ``b`` ``[n]`` (may overwrite ``x``)."""

    @abc.abstractmethod
    def normalize(self, x: Any, mean: Any, std: Any, clip: float) -> Any:
        """``clip((x - mean) / std, -clip, clip)`` with ``mean``/``std`` ``[n]`` (may overwrite ``x``)."""

    @abc.abstractmethod
    def categorical(self, logits: Any, col: int, n: int, mask: Any | None, u: Any | None) -> tuple[Any, Any]:
        """Sample one categorical per row over ``logits[:, col:col + n]``.

        ``mask`` (bool, same shape as ``logits``, every row with an allowed action) selects
        the allowed columns; ``u`` (float64 ``[B]``, uniforms in ``[0, 1)``) drives an
        inverse-CDF draw, or ``None`` takes the argmax. Returns ``(act int64 [B], logp float32 [B])``
        with ``act`` relative to ``col``.
        """

    @abc.abstractmethod
    def gaussian(
        self, mean: Any, log_std: Any, noise: Any | None, low: Any, high: Any, clip: bool
    ) -> tuple[Any, Any]:
        """``mean + exp(log_std) * noise`` (``mean`` when ``noise`` is None), optionally clipped to
        ``[low, high]``, and the summed log-density of that action. Returns ``(act [B, d], logp [B])``."""


class ArrayKernels(Kernels):
    """Reference implementation written against the Python Array API (numpy, array-api-strict, cupy)."""

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    def _activate(self, v: Any, activation: str) -> Any:
        xp = self.xp
        zero = xp.zeros((), dtype=v.dtype)
        if activation == "tanh":
            return xp.tanh(v)
        if activation == "relu":
            return xp.where(v > zero, v, zero)
        if activation == "leaky_relu":
            return xp.where(v > zero, v, v * xp.asarray(0.01, dtype=v.dtype))
        if activation == "elu":
            return xp.where(v > zero, v, xp.expm1(xp.minimum(v, zero)))
        if activation == "sigmoid":
            return 1.0 / (1.0 + xp.exp(-v))
        if activation == "silu":
            return v / (1.0 + xp.exp(-v))
        if activation == "identity":
            return v
        raise ValueError(f"unknown activation {activation!r}")

    def bias_act(self, x: Any, b: Any, activation: str) -> Any:
        return self._activate(x + b, activation)

    def normalize(self, x: Any, mean: Any, std: Any, clip: float) -> Any:
        return self.xp.clip((x - mean) / std, -clip, clip)

    def categorical(self, logits: Any, col: int, n: int, mask: Any | None, u: Any | None) -> tuple[Any, Any]:
        xp = self.xp
        part = logits[:, col:col + n]
        if mask is not None:
            part = xp.where(mask[:, col:col + n], part, xp.asarray(-xp.inf, dtype=part.dtype))
        z = part - xp.max(part, axis=1, keepdims=True)
        c = xp.cumulative_sum(xp.exp(z), axis=1)
        total = c[:, -1]
        if u is None:
            act = xp.argmax(z, axis=1)
        else:
            target = u * xp.astype(total, xp.float64)
            act = xp.sum(xp.astype(xp.astype(c, xp.float64) < target[:, None], xp.int64), axis=1)
        act = xp.astype(act, xp.int64)
        chosen = xp.arange(n, dtype=xp.int64)[None, :] == act[:, None]
        picked = xp.sum(xp.where(chosen, z, xp.zeros((), dtype=z.dtype)), axis=1)
        return act, xp.astype(picked - xp.log(total), xp.float32)

    def gaussian(
        self, mean: Any, log_std: Any, noise: Any | None, low: Any, high: Any, clip: bool
    ) -> tuple[Any, Any]:
        xp = self.xp
        act = mean if noise is None else mean + xp.exp(log_std) * noise
        if clip:
            act = xp.clip(act, low, high)
        z = (act - mean) * xp.exp(-log_std)
        per_dim = -0.5 * z * z - log_std - _HALF_LOG_2PI
        return act, xp.astype(xp.sum(per_dim, axis=-1), xp.float32)


class FusedKernels(Kernels):
    """Launches the kernels of :data:`CUDA_SOURCE`: argument marshalling shared by every launcher.

    Subclasses say how to make contiguous arrays and how to launch a named kernel over a
    1-D grid of ``size`` threads (blocks of :attr:`threads`); :class:`CupyKernels` does it on
    a GPU, and the test suite does it with the same source compiled for the host.
    """

    #: Threads per block for every launch.
    threads: int = 256

    @abc.abstractmethod
    def _launch(self, name: str, size: int, args: tuple[Any, ...]) -> None:
        """Run kernel ``name`` over ``size`` threads (rounded up to whole blocks) with ``args``."""

    @abc.abstractmethod
    def _contig(self, a: Any, dtype: Any) -> Any:
        """``a`` as a C-contiguous array of this namespace with ``dtype`` (no copy if it already is)."""

    @abc.abstractmethod
    def _empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """An uninitialised array of this namespace."""

    def _blocks(self, size: int) -> int:
        return (size + self.threads - 1) // self.threads

    def bias_act(self, x: Any, b: Any, activation: str) -> Any:
        x = self._contig(x, np.float32)
        size = int(x.size)
        if size:
            self._launch("relayrl_bias_act", size, (x, self._contig(b, np.float32), x, np.int64(size),
                                                    np.int32(x.shape[-1]), np.int32(ACTIVATIONS[activation])))
        return x

    def normalize(self, x: Any, mean: Any, std: Any, clip: float) -> Any:
        x = self._contig(x, np.float32)
        y = self._empty(tuple(x.shape), np.float32)
        size = int(x.size)
        if size:
            self._launch("relayrl_normalize", size, (x, self._contig(mean, np.float32), self._contig(std, np.float32),
                                                     y, np.int64(size), np.int32(x.shape[-1]), np.float32(clip)))
        return y

    def categorical(self, logits: Any, col: int, n: int, mask: Any | None, u: Any | None) -> tuple[Any, Any]:
        logits = self._contig(logits, np.float32)
        batch, ld = (int(v) for v in logits.shape)
        act = self._empty((batch,), np.int64)
        logp = self._empty((batch,), np.float32)
        if batch:
            # Unused pointers still need a valid array: pass the logits (never read).
            m = logits if mask is None else self._contig(mask, np.bool_)
            uu = logits if u is None else self._contig(u, np.float64)
            self._launch("relayrl_categorical", batch, (logits, m, uu, act, logp, np.int32(batch), np.int32(ld),
                                                        np.int32(col), np.int32(n), np.int32(mask is not None),
                                                        np.int32(u is not None)))
        return act, logp

    def gaussian(
        self, mean: Any, log_std: Any, noise: Any | None, low: Any, high: Any, clip: bool
    ) -> tuple[Any, Any]:
        mean = self._contig(mean, np.float32)
        batch, d = (int(v) for v in mean.shape)
        log_std = self._contig(log_std, np.float32)
        act = self._empty((batch, d), np.float32)
        logp = self._empty((batch,), np.float32)
        if batch:
            nz = mean if noise is None else self._contig(noise, np.float32)  # not read when noise is None
            self._launch("relayrl_gaussian", batch, (mean, log_std, nz, self._contig(low, np.float32),
                                                     self._contig(high, np.float32), act, logp, np.int32(batch),
                                                     np.int32(d), np.int32(log_std.ndim == 2),
                                                     np.int32(noise is not None), np.int32(clip)))
        return act, logp


#: Names of the kernels in :data:`CUDA_SOURCE`.
KERNEL_NAMES = ("relayrl_bias_act", "relayrl_normalize", "relayrl_categorical", "relayrl_gaussian")


class CupyKernels(FusedKernels):
    """The fused kernels of :data:`CUDA_SOURCE`, compiled by CuPy (NVRTC) for the current device."""

    on_device = True

    def __init__(self, cp: Any) -> None:
        from array_api_compat import array_namespace

        self.cp = cp
        self.xp = array_namespace(cp.empty(0, dtype=cp.float32))
        module = cp.RawModule(code=CUDA_SOURCE, options=("-std=c++11",))
        self._functions = {name: module.get_function(name) for name in KERNEL_NAMES}

    def to_host(self, a: Any) -> np.ndarray[Any, Any]:
        return np.asarray(a.get()) if hasattr(a, "get") else np.asarray(a)

    def _launch(self, name: str, size: int, args: tuple[Any, ...]) -> None:
        self._functions[name]((self._blocks(size),), (self.threads,), args)

    def _contig(self, a: Any, dtype: Any) -> Any:
        return self.cp.ascontiguousarray(self.cp.asarray(a, dtype=dtype))

    def _empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.cp.empty(shape, dtype=dtype)
