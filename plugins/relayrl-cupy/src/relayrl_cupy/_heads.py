"""Heads that sample on the device (through :class:`~relayrl_cupy.Kernels`) and return host arrays.

Randomness: the uniforms (categorical) and standard normals (Gaussian) are drawn on the host
from the caller's ``numpy.random.Generator``, in exactly the calls and order relayrl's own heads
make (:mod:`relayrl._heads`), and copied to the device with the batch (8 bytes per row per
categorical component, 4 bytes per action dimension). So a seed gives the same actions on the
GPU as on the CPU (up to float rounding exactly at a CDF boundary), and sampling is
deterministic per seed whatever the device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from relayrl import CategoricalHead, GaussianHead, Head, ModelError, ModelMetadata, ObservationError
from relayrl import MultiCategoricalHead as _HostMultiCategorical
from relayrl.abc import HeadOutputs
from relayrl.spaces import Box, Discrete, MultiDiscrete

from ._kernels import Kernels

__all__ = ["DeviceCategoricalHead", "DeviceGaussianHead", "DeviceMultiCategoricalHead", "make_array_head"]

Array = npt.NDArray[Any]


def _check_mask(mask: Any, batch: int, bounds: list[int]) -> Array:
    m = np.asarray(mask)
    width = bounds[-1]
    if m.shape != (batch, width):
        raise ObservationError(f"action mask has shape {m.shape}, expected ({batch}, {width})")
    if m.dtype != np.bool_:
        if m.dtype.kind not in "biuf":
            raise ObservationError(f"action mask has dtype {m.dtype}, expected bool (or 0/1 numbers)")
        m = m != 0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        allowed = m[:, lo:hi].any(axis=1)
        if not allowed.all():
            row = int(np.flatnonzero(~allowed)[0])
            raise ObservationError(f"action mask row {row} masks out every action"
                                   + (f" of component starting at logit {lo}" if lo else ""))
    return np.ascontiguousarray(m)


class _DeviceCategorical(Head):
    _bounds: list[int]
    _host_head: Head

    def __init__(self, kernels: Kernels) -> None:
        self.kernels = kernels

    def _sample(
        self, out: HeadOutputs, rng: np.random.Generator, mask: Array | None, deterministic: bool
    ) -> tuple[Array, Array]:
        k = self.kernels
        if out.logits is None:
            raise ModelError("a categorical head needs logits; the policy returned none")
        logits = k.to_device(out.logits, dtype=k.xp.float32)
        if logits.ndim != 2 or logits.shape[1] != self._bounds[-1]:
            raise ModelError(f"logits have shape {tuple(logits.shape)}, expected (batch, {self._bounds[-1]})")
        batch = int(logits.shape[0])
        m = None if mask is None else k.to_device(_check_mask(mask, batch, self._bounds))
        components = len(self._bounds) - 1
        # One draw and one copy for all components: rng.random((C, B)) gives exactly the numbers
        # of C successive rng.random(B) calls, which is what relayrl's host heads make.
        u_all = None if deterministic else k.to_device(rng.random((components, batch), dtype=np.float64))
        acts, logps = [], []
        for i, (lo, hi) in enumerate(zip(self._bounds[:-1], self._bounds[1:])):
            a, lp = k.categorical(logits, lo, hi - lo, m, None if u_all is None else u_all[i, :])
            acts.append(a)
            logps.append(lp)
        if len(acts) == 1:
            return k.to_host(acts[0]), k.to_host(logps[0])
        act = k.xp.stack(acts, axis=1)
        logp = logps[0]
        for lp in logps[1:]:
            logp = logp + lp
        return k.to_host(act), k.to_host(logp)

    def log_prob(self, out: HeadOutputs, act: Array, mask: Array | None = None) -> Array:
        """Log-probability of given actions, computed on the host by relayrl's own head
        (this is for training code, not the acting hot path)."""
        return self._host_head.log_prob(out, act, mask)


class DeviceCategoricalHead(_DeviceCategorical):
    """Categorical over ``Discrete(n)`` sampled by the ``relayrl_categorical`` kernel.

    .. versionadded:: 0.1
    """

    def __init__(self, space: Discrete, kernels: Kernels) -> None:
        super().__init__(kernels)
        self.space = space
        self.action_shape = ()
        self.action_dtype = np.dtype(np.int64)
        self.mask_dim = space.n
        self._bounds = [0, space.n]
        self._host_head = CategoricalHead(space)

    def sample(
        self, out: HeadOutputs, rng: np.random.Generator, mask: Array | None = None, deterministic: bool = False
    ) -> tuple[Array, Array]:
        act, logp = self._sample(out, rng, mask, deterministic)
        if self.space.start:
            act = act + self.space.start
        return act, logp


class DeviceMultiCategoricalHead(_DeviceCategorical):
    """Independent categoricals over ``MultiDiscrete(nvec)``, one kernel launch per component.

    .. versionadded:: 0.1
    """

    def __init__(self, space: MultiDiscrete, kernels: Kernels) -> None:
        super().__init__(kernels)
        self.space = space
        self.action_shape = space.shape
        self.action_dtype = np.dtype(np.int64)
        self.mask_dim = space.flat_dim
        self._bounds = [0, *np.cumsum(space.nvec).tolist()]
        self._host_head = _HostMultiCategorical(space)

    def sample(
        self, out: HeadOutputs, rng: np.random.Generator, mask: Array | None = None, deterministic: bool = False
    ) -> tuple[Array, Array]:
        return self._sample(out, rng, mask, deterministic)


class DeviceGaussianHead(Head):
    """Diagonal Gaussian over a 1-D ``Box`` sampled by the ``relayrl_gaussian`` kernel.

    ``clip=True`` clips sampled actions to the bounds and returns the log-prob of the clipped
    action, as :class:`relayrl.GaussianHead` does.

    .. versionadded:: 0.1
    """

    def __init__(self, space: Box, kernels: Kernels, *, clip: bool = False) -> None:
        self.kernels = kernels
        self.space = space
        self.action_shape = space.shape
        self.action_dtype = np.dtype(np.float32)
        self.mask_dim = 0
        self.clip = clip
        self._low = kernels.to_device(space.low.astype(np.float32).reshape(-1))
        self._high = kernels.to_device(space.high.astype(np.float32).reshape(-1))
        self._host_head = GaussianHead(space, clip=clip)

    def sample(
        self, out: HeadOutputs, rng: np.random.Generator, mask: Array | None = None, deterministic: bool = False
    ) -> tuple[Array, Array]:
        if mask is not None:
            raise ObservationError("action masks apply to discrete action spaces only; this head is Gaussian")
        k = self.kernels
        if out.mean is None or out.log_std is None:
            raise ModelError("a Gaussian head needs mean and log_std; the policy returned none")
        mean = k.to_device(out.mean, dtype=k.xp.float32)
        log_std = k.to_device(out.log_std, dtype=k.xp.float32)
        d = self.space.shape[0]
        if mean.ndim != 2 or mean.shape[1] != d or tuple(log_std.shape) not in ((d,), tuple(mean.shape)):
            raise ModelError(f"mean {tuple(mean.shape)} and log_std {tuple(log_std.shape)} do not fit a "
                             f"Gaussian over {d} dimensions")
        noise = None
        if not deterministic:
            noise = k.to_device(rng.standard_normal(tuple(mean.shape), dtype=np.float32))
        act, logp = k.gaussian(mean, log_std, noise, self._low, self._high, self.clip)
        return k.to_host(act), k.to_host(logp)

    def log_prob(self, out: HeadOutputs, act: Array, mask: Array | None = None) -> Array:
        """Log-probability of given actions, computed on the host by relayrl's own head."""
        return self._host_head.log_prob(out, act, mask)


def make_array_head(metadata: ModelMetadata, kernels: Kernels, *, clip: bool | None = None) -> Head:
    """The device head for a model's metadata, running on ``kernels`` (any namespace).

    ``clip`` overrides the model's ``extra["clip_actions"]`` for Gaussian heads, as in
    :func:`relayrl.make_head`.

    Raises:
        ModelError: the metadata names a head this backend does not know.
    """
    space = metadata.action_space
    if metadata.policy_head == "categorical" and isinstance(space, Discrete):
        return DeviceCategoricalHead(space, kernels)
    if metadata.policy_head == "multi_categorical" and isinstance(space, MultiDiscrete):
        return DeviceMultiCategoricalHead(space, kernels)
    if metadata.policy_head == "gaussian" and isinstance(space, Box) and len(space.shape) == 1:
        do_clip = bool(metadata.extra.get("clip_actions", False)) if clip is None else clip
        return DeviceGaussianHead(space, kernels, clip=do_clip)
    raise ModelError(f"no device head {metadata.policy_head!r} for {space!r}")
