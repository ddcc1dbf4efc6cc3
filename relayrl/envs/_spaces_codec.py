"""Observation encoders and action decoders between gymnasium/PettingZoo spaces and relayrl arrays.

Observations reach the agent as float32 arrays: a ``Box`` keeps its shape, a ``Discrete`` becomes a
one-hot vector, a ``MultiDiscrete`` the concatenation of one-hot vectors, a ``MultiBinary`` a flat
0/1 vector. Actions come back from the agent in the relayrl action space and are converted to
what the environment expects (Box actions clipped to the bounds, MultiBinary reshaped).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from .._errors import ConfigError, ObservationError
from .._spaces import Box, Discrete, MultiDiscrete, Space, from_gymnasium

__all__ = ["ActionCodec", "ObsCodec", "action_codec", "obs_codec"]

Array = npt.NDArray[Any]


@attrs.frozen(eq=False)
class ObsCodec:
    """Turns a batch of native observations into a float32 batch ``[B, *space.shape]``."""

    #: The relayrl observation space the agent sees (always a float32 Box).
    space: Box
    #: ``encode(batch)`` for a batch stacked along the first axis.
    encode: Callable[[Any], Array]
    #: Shape of one native observation (to validate and stack single observations).
    native_shape: tuple[int, ...]

    def encode_one(self, obs: Any) -> Array:
        """Encode one (unbatched) native observation."""
        out: Array = self.encode(np.asarray(obs)[None])[0]
        return out


def obs_codec(space: Any) -> ObsCodec:
    """The observation codec for a gymnasium (or relayrl) observation space.

    Raises:
        ConfigError: the space has no flat float encoding (``Dict``, ``Tuple``, text, graphs ...).
    """
    kind = type(space).__name__
    if kind == "Box":
        shape = tuple(int(s) for s in space.shape)
        box = Box(np.asarray(space.low, dtype=np.float64), np.asarray(space.high, dtype=np.float64), shape)

        def enc_box(x: Any) -> Array:
            return np.array(x, dtype=np.float32)

        return ObsCodec(box, enc_box, shape)
    if kind == "Discrete":
        n, start = int(space.n), int(space.start)
        eye = np.eye(n, dtype=np.float32)

        def enc_discrete(x: Any) -> Array:
            return eye[np.asarray(x, dtype=np.int64) - start]

        return ObsCodec(Box(0.0, 1.0, (n,)), enc_discrete, ())
    if kind == "MultiDiscrete":
        nvec = np.asarray(space.nvec, dtype=np.int64)
        if nvec.ndim != 1:
            raise ConfigError(f"only 1-D MultiDiscrete observation spaces are supported, got nvec {nvec.shape}")
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]]).astype(np.int64)
        width = int(nvec.sum())

        def enc_multi(x: Any) -> Array:
            a = np.asarray(x, dtype=np.int64)
            out = np.zeros((a.shape[0], width), dtype=np.float32)
            rows = np.arange(a.shape[0])[:, None]
            out[rows, a + offsets] = 1.0
            return out

        return ObsCodec(Box(0.0, 1.0, (width,)), enc_multi, (len(nvec),))
    if kind == "MultiBinary":
        shape = tuple(int(s) for s in np.atleast_1d(space.shape))
        flat = int(np.prod(shape))

        def enc_binary(x: Any) -> Array:
            a = np.asarray(x, dtype=np.float32)
            return a.reshape(a.shape[0], flat)

        return ObsCodec(Box(0.0, 1.0, (flat,)), enc_binary, shape)
    raise ConfigError(f"cannot encode a {kind} observation space as a flat array; use Box, Discrete, "
                      "MultiDiscrete or MultiBinary observations (or wrap the environment)")


@attrs.frozen(eq=False)
class ActionCodec:
    """Checks a batch of relayrl actions and converts it to what the environment expects."""

    #: The relayrl action space the agent samples from.
    space: Space
    #: Shape of one action as the environment expects it.
    native_shape: tuple[int, ...]
    #: dtype the environment expects.
    native_dtype: np.dtype[Any]
    #: A valid action used for rows the environment ignores (slots that do not act this step).
    noop: Array

    def decode(self, actions: Any, rows: int) -> Array:
        """Validate ``actions`` (``[rows, *space.shape]``) and return the native batch.

        Box actions are clipped to the bounds; integer actions must lie in the space.

        Raises:
            ObservationError: wrong shape, dtype or out-of-range discrete actions.
        """
        a = np.asarray(actions)
        expected = (rows, *self.space.shape)
        if a.shape != expected:
            raise ObservationError(f"actions must have shape {expected} (one row per slot), got {a.shape}")
        space = self.space
        if isinstance(space, Box):
            if a.dtype.kind not in "fiu":
                raise ObservationError(f"Box actions must be numeric, got dtype {a.dtype}")
            out = np.clip(a, space.low, space.high).astype(self.native_dtype, copy=False)
        else:
            if a.dtype.kind not in "iu":
                raise ObservationError(f"discrete actions must be integers, got dtype {a.dtype}")
            if isinstance(space, Discrete):
                lo, hi = space.start, space.start + space.n
                if rows and (a.min() < lo or a.max() >= hi):
                    bad = (a < lo) | (a >= hi)
                    raise ObservationError(f"actions out of range for {space}: {a[bad][:4]}")
            else:
                bad = (a < 0) | (a >= np.asarray(space.nvec))
                if bad.any():
                    raise ObservationError(f"actions out of range for {space}: "
                                           f"{a[bad.reshape(rows, -1).any(axis=1)][:4]}")
            out = a.astype(self.native_dtype, copy=False)
        if out.shape[1:] != self.native_shape:
            out = out.reshape(rows, *self.native_shape)
        result: Array = out
        return result


def action_codec(space: Any) -> ActionCodec:
    """The action codec for a gymnasium (or relayrl) action space.

    Raises:
        ConfigError: the space has no relayrl equivalent.
    """
    rl = from_gymnasium(space)
    native_shape = tuple(int(s) for s in np.atleast_1d(space.shape)) if type(space).__name__ == "MultiBinary" \
        else tuple(int(s) for s in rl.shape)
    dtype = np.dtype(getattr(space, "dtype", None) or rl.dtype)
    if isinstance(rl, Box):
        if len(rl.shape) != 1:
            raise ConfigError(f"Box action spaces must be 1-D, got shape {rl.shape}")
        if dtype.kind != "f":
            dtype = np.dtype(np.float32)
        noop = np.clip(np.zeros(rl.shape), rl.low, rl.high).astype(dtype)
    elif isinstance(rl, Discrete):
        noop = np.asarray(rl.start, dtype=np.int64)
    elif isinstance(rl, MultiDiscrete):
        noop = np.zeros(rl.shape, dtype=np.int64)
    else:  # pragma: no cover - from_gymnasium returns one of the three
        raise ConfigError(f"unsupported action space {rl!r}")
    return ActionCodec(rl, native_shape, dtype, noop)
