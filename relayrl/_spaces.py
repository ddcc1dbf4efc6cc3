"""Action and observation spaces: Discrete, Box, MultiDiscrete.

Spaces are frozen values. They serialise to plain JSON (``to_dict`` / :func:`space_from_dict`),
which is how a model module records its action space, and they can be built from gymnasium
spaces (:func:`from_gymnasium`) without gymnasium being a dependency of relayrl.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import attrs
import numpy as np
import numpy.typing as npt

from ._errors import ConfigError

__all__ = ["Box", "Discrete", "MultiDiscrete", "Space", "from_gymnasium", "space_from_dict"]


def _as_tuple(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, int | np.integer):
        return (int(shape),)
    return tuple(int(s) for s in shape)


@attrs.frozen
class Discrete:
    """``n`` actions ``start, start + 1, ..., start + n - 1`` (integer actions).

    .. versionadded:: 0.1
    """

    n: int = attrs.field(converter=int)
    start: int = attrs.field(default=0, converter=int, kw_only=True)

    @n.validator
    def _check_n(self, _: attrs.Attribute[int], value: int) -> None:
        if value < 1:
            raise ConfigError(f"Discrete.n must be >= 1, got {value}")

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one action: ``()``."""
        return ()

    @property
    def dtype(self) -> np.dtype[Any]:
        """The dtype of actions: int64."""
        return np.dtype(np.int64)

    @property
    def flat_dim(self) -> int:
        """Width of the policy's logits: ``n``."""
        return self.n

    def contains(self, x: Any) -> bool:
        """Whether ``x`` is a valid action."""
        a = np.asarray(x)
        return a.shape == () and np.issubdtype(a.dtype, np.integer) and self.start <= int(a) < self.start + self.n

    def sample(self, rng: np.random.Generator) -> np.int64:
        """A uniformly random action."""
        return np.int64(self.start + rng.integers(self.n))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :func:`space_from_dict` reverses it."""
        return {"type": "discrete", "n": self.n, "start": self.start}


@attrs.frozen
class MultiDiscrete:
    """A vector of independent discrete actions; component ``i`` takes ``0 .. nvec[i] - 1``.

    .. versionadded:: 0.1
    """

    nvec: tuple[int, ...] = attrs.field(converter=_as_tuple)

    @nvec.validator
    def _check_nvec(self, _: attrs.Attribute[tuple[int, ...]], value: tuple[int, ...]) -> None:
        if not value or any(v < 1 for v in value):
            raise ConfigError(f"MultiDiscrete.nvec must be non-empty with every entry >= 1, got {value}")

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one action: ``(len(nvec),)``."""
        return (len(self.nvec),)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The dtype of actions: int64."""
        return np.dtype(np.int64)

    @property
    def flat_dim(self) -> int:
        """Width of the policy's concatenated logits: ``sum(nvec)``."""
        return int(sum(self.nvec))

    def contains(self, x: Any) -> bool:
        """Whether ``x`` is a valid action."""
        a = np.asarray(x)
        return (
            a.shape == self.shape
            and np.issubdtype(a.dtype, np.integer)
            and bool(np.all((a >= 0) & (a < np.asarray(self.nvec))))
        )

    def sample(self, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        """A uniformly random action."""
        return rng.integers(np.asarray(self.nvec)).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :func:`space_from_dict` reverses it."""
        return {"type": "multi_discrete", "nvec": list(self.nvec)}


def _bound_array(value: Any) -> npt.NDArray[np.float64]:
    return np.asarray(value, dtype=np.float64)


@attrs.frozen(eq=False)
class Box:
    """A box in R^n: ``low <= x <= high`` element-wise (bounds may be infinite).

    ``low`` and ``high`` are scalars or arrays broadcastable to ``shape``; they are stored as
    float64 arrays of exactly ``shape``.

    .. versionadded:: 0.1
    """

    low: npt.NDArray[np.float64] = attrs.field(converter=_bound_array)
    high: npt.NDArray[np.float64] = attrs.field(converter=_bound_array)
    shape: tuple[int, ...] = attrs.field(default=None, converter=attrs.converters.optional(_as_tuple))
    dtype_name: str = attrs.field(default="float32", kw_only=True)

    def __attrs_post_init__(self) -> None:
        try:
            shape = self.shape if self.shape is not None else np.broadcast_shapes(self.low.shape, self.high.shape)
            low = np.broadcast_to(self.low, shape).copy()
            high = np.broadcast_to(self.high, shape).copy()
        except ValueError as exc:
            raise ConfigError(f"Box bounds of shapes {self.low.shape} and {self.high.shape} "
                              f"do not fit shape {self.shape}") from exc
        if np.any(low > high):
            raise ConfigError("Box.low must be <= Box.high everywhere")
        if np.dtype(self.dtype_name).kind != "f":
            raise ConfigError(f"Box dtype must be a float dtype, got {self.dtype_name!r}")
        low.flags.writeable = False
        high.flags.writeable = False
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The dtype of points in the box (float32 unless told otherwise)."""
        return np.dtype(self.dtype_name)

    @property
    def flat_dim(self) -> int:
        """Number of scalars in one point."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def bounded(self) -> bool:
        """Whether every bound is finite."""
        return bool(np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high)))

    def contains(self, x: Any) -> bool:
        """Whether ``x`` lies in the box."""
        a = np.asarray(x)
        return a.shape == self.shape and bool(np.all((a >= self.low) & (a <= self.high)))

    def sample(self, rng: np.random.Generator) -> npt.NDArray[Any]:
        """A random point: uniform where bounded, normal where not."""
        low = np.where(np.isfinite(self.low), self.low, -1.0)
        high = np.where(np.isfinite(self.high), self.high, 1.0)
        return rng.uniform(low, high).astype(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (infinite bounds become the strings ``"inf"`` / ``"-inf"``)."""

        def enc(a: npt.NDArray[np.float64]) -> Any:
            return [v if np.isfinite(v) else ("inf" if v > 0 else "-inf") for v in a.ravel().tolist()]

        return {
            "type": "box",
            "shape": list(self.shape),
            "low": enc(self.low),
            "high": enc(self.high),
            "dtype": self.dtype_name,
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Box):
            return NotImplemented
        return (
            self.shape == other.shape
            and self.dtype_name == other.dtype_name
            and bool(np.array_equal(self.low, other.low))
            and bool(np.array_equal(self.high, other.high))
        )

    def __hash__(self) -> int:
        return hash((self.shape, self.dtype_name, self.low.tobytes(), self.high.tobytes()))


Space: TypeAlias = Discrete | Box | MultiDiscrete


def space_from_dict(data: dict[str, Any]) -> Space:
    """Rebuild a space from :meth:`to_dict` output.

    Raises:
        ConfigError: the dictionary does not describe a known space.

    .. versionadded:: 0.1
    """
    try:
        kind = data["type"]
        if kind == "discrete":
            return Discrete(int(data["n"]), start=int(data.get("start", 0)))
        if kind == "multi_discrete":
            return MultiDiscrete(tuple(int(v) for v in data["nvec"]))
        if kind == "box":
            shape = tuple(int(s) for s in data["shape"])
            low = np.asarray([float(v) for v in data["low"]], dtype=np.float64).reshape(shape)
            high = np.asarray([float(v) for v in data["high"]], dtype=np.float64).reshape(shape)
            return Box(low, high, shape, dtype_name=str(data.get("dtype", "float32")))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"malformed space description {data!r}: {exc}") from exc
    raise ConfigError(f"unknown space type {data.get('type')!r} in {data!r}")


def from_gymnasium(space: Any) -> Space:
    """Convert a gymnasium space (``Discrete``, ``Box``, ``MultiDiscrete``, ``MultiBinary``).

    A relayrl space is returned unchanged, so callers may pass either.

    Raises:
        ConfigError: the space kind has no relayrl equivalent (``Dict``, ``Tuple``, ...).

    .. versionadded:: 0.1
    """
    if isinstance(space, Discrete | Box | MultiDiscrete):
        return space
    kind = type(space).__name__
    if kind == "Discrete":
        return Discrete(int(space.n), start=int(space.start))
    if kind == "Box":
        dtype = np.dtype(space.dtype)
        return Box(space.low, space.high, space.shape, dtype_name=dtype.name if dtype.kind == "f" else "float32")
    if kind == "MultiDiscrete":
        nvec = np.asarray(space.nvec)
        if nvec.ndim != 1:
            raise ConfigError(f"only 1-D MultiDiscrete spaces are supported, got nvec of shape {nvec.shape}")
        return MultiDiscrete(tuple(int(v) for v in nvec))
    if kind == "MultiBinary":
        n = int(np.prod(space.shape))
        return MultiDiscrete((2,) * n)
    raise ConfigError(f"cannot convert a gymnasium {kind} space; use Discrete, Box or MultiDiscrete")
