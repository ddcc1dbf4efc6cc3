"""Policy heads: vectorised sampling of actions and log-probabilities from head outputs.

Every head works on a whole batch at once with a caller-supplied ``numpy.random.Generator``,
so the same seed gives the same actions whatever backend produced the head outputs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import numpy.typing as npt

from ._backend_api import HeadOutputs
from ._errors import ModelError, ObservationError
from ._model import ModelMetadata
from ._spaces import Box, Discrete, MultiDiscrete

__all__ = ["CategoricalHead", "GaussianHead", "Head", "MultiCategoricalHead", "make_head"]

Array = npt.NDArray[Any]
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _host(a: Any) -> Array:
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)  # a device array (cupy) reaching a host head
    return np.asarray(get() if get is not None else a)


class Head(ABC):
    """Turns head outputs into actions, log-probs and values for a batch.

    .. versionadded:: 0.1
    """

    #: Shape of one action.
    action_shape: tuple[int, ...]
    #: Dtype of actions.
    action_dtype: np.dtype[Any]
    #: Width of a mask row (0 when the head takes no mask).
    mask_dim: int

    @abstractmethod
    def sample(
        self, out: HeadOutputs, rng: np.random.Generator, mask: Array | None = None, deterministic: bool = False
    ) -> tuple[Array, Array]:
        """Return ``(actions [B, *action_shape], log_probs [B])``.

        Raises:
            ObservationError: the mask has the wrong shape, or masks out every action of a row.
        """

    @abstractmethod
    def log_prob(self, out: HeadOutputs, act: Array, mask: Array | None = None) -> Array:
        """Log-probability of given actions under the head outputs, shape ``[B]``."""


def _masked_logits(logits: Array, mask: Array | None, offset: int = 0) -> Array:
    if mask is None:
        return logits
    allowed = mask.any(axis=1)
    if not allowed.all():
        row = int(np.flatnonzero(~allowed)[0])
        raise ObservationError(f"action mask row {row} masks out every action"
                               + (f" of component starting at logit {offset}" if offset else ""))
    return np.where(mask, logits, -np.inf)


def _check_mask(mask: Any, batch: int, width: int) -> Array:
    m = np.asarray(mask)
    if m.shape != (batch, width):
        raise ObservationError(f"action mask has shape {m.shape}, expected ({batch}, {width})")
    if m.dtype != np.bool_:
        if m.dtype.kind not in "biuf":
            raise ObservationError(f"action mask has dtype {m.dtype}, expected bool (or 0/1 numbers)")
        m = m != 0
    return m


def _categorical(logits: Array, rng: np.random.Generator, deterministic: bool) -> tuple[Array, Array]:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    c = np.cumsum(p, axis=1)
    total = c[:, -1]
    if deterministic:
        act = z.argmax(axis=1)
    else:
        # Inverse-CDF sampling: one uniform per row. Scaling by the row total keeps the index
        # below the last allowed action even with rounding, and masked actions (p = 0) add
        # nothing to the CDF so they can never be picked.
        u = rng.random(z.shape[0], dtype=np.float64) * total
        act = (c < u[:, None]).sum(axis=1)
    rows = np.arange(z.shape[0])
    logp = z[rows, act] - np.log(total)
    return act.astype(np.int64, copy=False), logp.astype(np.float32, copy=False)


class CategoricalHead(Head):
    """Categorical over ``Discrete(n)``; masked logits become ``-inf``.

    .. versionadded:: 0.1
    """

    def __init__(self, space: Discrete) -> None:
        self.space = space
        self.action_shape = ()
        self.action_dtype = np.dtype(np.int64)
        self.mask_dim = space.n
        self._start = space.start

    def sample(
        self, out: HeadOutputs, rng: np.random.Generator, mask: Array | None = None, deterministic: bool = False
    ) -> tuple[Array, Array]:
        logits = _host(out.logits)
        if mask is not None:
            logits = _masked_logits(logits, _check_mask(mask, logits.shape[0], self.mask_dim))
        act, logp = _categorical(logits, rng, deterministic)
        if self._start:
            act = act + self._start
        return act, logp

    def log_prob(self, out: HeadOutputs, act: Array, mask: Array | None = None) -> Array:
        logits = _host(out.logits).astype(np.float64)
        if mask is not None:
            logits = _masked_logits(logits, _check_mask(mask, logits.shape[0], self.mask_dim))
        z = logits - logits.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        idx = np.asarray(act, dtype=np.int64) - self._start
        res: Array = (z[np.arange(z.shape[0]), idx] - lse).astype(np.float32)
        return res


class MultiCategoricalHead(Head):
    """Independent categoricals over ``MultiDiscrete(nvec)`` (logits concatenated).

    .. versionadded:: 0.1
    """

    def __init__(self, space: MultiDiscrete) -> None:
        self.space = space
        self.action_shape = space.shape
        self.action_dtype = np.dtype(np.int64)
        self.mask_dim = space.flat_dim
        self._bounds = np.concatenate([[0], np.cumsum(space.nvec)]).tolist()

    def sample(
        self, out: HeadOutputs, rng: np.random.Generator, mask: Array | None = None, deterministic: bool = False
    ) -> tuple[Array, Array]:
        logits = _host(out.logits)
        batch = logits.shape[0]
        m = None if mask is None else _check_mask(mask, batch, self.mask_dim)
        acts = np.empty((batch, len(self.space.nvec)), dtype=np.int64)
        logp = np.zeros(batch, dtype=np.float32)
        for i, (lo, hi) in enumerate(zip(self._bounds[:-1], self._bounds[1:])):
            part = logits[:, lo:hi]
            if m is not None:
                part = _masked_logits(part, m[:, lo:hi], lo)
            a, lp = _categorical(part, rng, deterministic)
            acts[:, i] = a
            logp += lp
        return acts, logp

    def log_prob(self, out: HeadOutputs, act: Array, mask: Array | None = None) -> Array:
        logits = _host(out.logits).astype(np.float64)
        a = np.asarray(act, dtype=np.int64)
        m = None if mask is None else _check_mask(mask, logits.shape[0], self.mask_dim)
        total = np.zeros(logits.shape[0])
        rows = np.arange(logits.shape[0])
        for i, (lo, hi) in enumerate(zip(self._bounds[:-1], self._bounds[1:])):
            part = logits[:, lo:hi]
            if m is not None:
                part = _masked_logits(part, m[:, lo:hi], lo)
            z = part - part.max(axis=1, keepdims=True)
            total += z[rows, a[:, i]] - np.log(np.exp(z).sum(axis=1))
        return total.astype(np.float32)


class GaussianHead(Head):
    """Diagonal Gaussian over a 1-D ``Box``; ``clip=True`` clips sampled actions to the bounds.

    With clipping, the log-prob is that of the returned (clipped) action, so a recorded step is
    always self-consistent. Training code usually prefers unclipped actions and clips only
    when stepping the environment, which is the default.

    .. versionadded:: 0.1
    """

    def __init__(self, space: Box, *, clip: bool = False) -> None:
        self.space = space
        self.action_shape = space.shape
        self.action_dtype = np.dtype(np.float32)
        self.mask_dim = 0
        self.clip = clip
        self._low = space.low.astype(np.float32)
        self._high = space.high.astype(np.float32)

    def _params(self, out: HeadOutputs) -> tuple[Array, Array]:
        mean = _host(out.mean)
        log_std = _host(out.log_std)
        return mean, log_std

    def sample(
        self, out: HeadOutputs, rng: np.random.Generator, mask: Array | None = None, deterministic: bool = False
    ) -> tuple[Array, Array]:
        if mask is not None:
            raise ObservationError("action masks apply to discrete action spaces only; this head is Gaussian")
        mean, log_std = self._params(out)
        if deterministic:
            act = mean.astype(np.float32, copy=True)
        else:
            noise = rng.standard_normal(mean.shape, dtype=np.float32)
            act = (mean + np.exp(log_std) * noise).astype(np.float32, copy=False)
        if self.clip:
            np.clip(act, self._low, self._high, out=act)
        return act, self._logp(mean, log_std, act)

    def _logp(self, mean: Array, log_std: Array, act: Array) -> Array:
        z = (act - mean) * np.exp(-log_std)
        per_dim: Array = -0.5 * z * z - log_std - _HALF_LOG_2PI
        res: Array = per_dim.sum(axis=-1).astype(np.float32, copy=False)
        return res

    def log_prob(self, out: HeadOutputs, act: Array, mask: Array | None = None) -> Array:
        mean, log_std = self._params(out)
        return self._logp(mean, log_std, np.asarray(act, dtype=np.float32))


def make_head(metadata: ModelMetadata, *, clip: bool | None = None) -> Head:
    """Build the head a model's metadata declares.

    ``clip`` overrides the model's ``extra["clip_actions"]`` setting for Gaussian heads.

    .. versionadded:: 0.1
    """
    space = metadata.action_space
    if metadata.policy_head == "categorical" and isinstance(space, Discrete):
        return CategoricalHead(space)
    if metadata.policy_head == "multi_categorical" and isinstance(space, MultiDiscrete):
        return MultiCategoricalHead(space)
    if metadata.policy_head == "gaussian" and isinstance(space, Box):
        do_clip = bool(metadata.extra.get("clip_actions", False)) if clip is None else clip
        return GaussianHead(space, clip=do_clip)
    raise ModelError(f"no head {metadata.policy_head!r} for {space!r}")
