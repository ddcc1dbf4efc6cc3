"""The contract between relayrl's training server and a learning-algorithm plugin (see :mod:`relayrl.abc`)."""

from __future__ import annotations

import abc
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import attrs

from ._errors import ConfigError
from ._trajectory import Trajectory

if typing.TYPE_CHECKING:
    from ._model import ModelModule

__all__ = ["Algorithm", "make_config"]

C = TypeVar("C")


def _check_type(cls_name: str, key: str, value: Any, hint: Any) -> Any:
    """Check (and lightly coerce) ``value`` against a simple type hint; raise ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            try:
                return _check_type(cls_name, key, value, arm)
            except ConfigError:
                continue
        raise ConfigError(f"{cls_name}.{key}: {value!r} is not a valid value (expected {hint})")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{cls_name}.{key}: expected None, got {value!r}")
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        raise ConfigError(f"{cls_name}.{key}: {value!r} is not one of {list(typing.get_args(hint))}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{cls_name}.{key}: expected a sequence, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(cls_name, key, v, args[0]) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{cls_name}.{key}: expected {len(args)} values, got {value!r}")
        return tuple(_check_type(cls_name, key, v, a) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{cls_name}.{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{cls_name}.{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{cls_name}.{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{cls_name}.{key}: expected a string, got {value!r}")
    return value  # anything more exotic is left to the class's own validators


def make_config(config_class: type[C], config: Mapping[str, Any] | C | None) -> C:
    """Build a frozen attrs config from a mapping, validating every key and value.

    Unknown keys, values of the wrong type and values the class's validators reject raise
    :class:`~relayrl.ConfigError` naming the key. Lists are accepted for tuple fields (TOML
    and JSON have no tuples). An instance of ``config_class`` is returned as is.

    Raises:
        ConfigError: an unknown key or a bad value.

    .. versionadded:: 0.1
    """
    if config is None:
        config = {}
    if isinstance(config, config_class):
        return config
    if not isinstance(config, Mapping):
        raise ConfigError(f"{config_class.__name__}: config must be a mapping, got {type(config).__name__}")
    fields = attrs.fields_dict(config_class)  # type: ignore[arg-type]
    hints = typing.get_type_hints(config_class)
    name = config_class.__name__
    kwargs: dict[str, Any] = {}
    for key, value in config.items():
        if key not in fields:
            raise ConfigError(f"{name}: unknown key {key!r} (known keys: {', '.join(sorted(fields))})")
        kwargs[key] = _check_type(name, key, value, hints.get(key, Any))
    try:
        return config_class(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name}: {exc}") from exc


class Algorithm(abc.ABC):
    """A learning algorithm: trajectories in, model modules out.

    Plugins register subclasses under the ``relayrl.algorithms`` entry-point group;
    :func:`relayrl.algorithms.get` returns the *class*, which the training server
    instantiates with the environment's spaces.

    Contract for implementers:

    * ``__init__(obs_space, action_space, *, config=None, seed=0)`` accepts relayrl or
      gymnasium spaces. ``config`` is a mapping (or an instance of :attr:`config_class`);
      unknown keys and bad values raise :class:`~relayrl.ConfigError` naming the key
      (:func:`make_config` does this for any frozen attrs class). The defaults must learn
      well without flags; :meth:`preset_for` gives per-environment overrides.
    * :meth:`receive_trajectory` is called on the trio thread: it must be cheap (append and
      count) and thread-safe against a concurrent :meth:`train`.
    * :meth:`train` runs in a worker thread, possibly while more trajectories arrive: it
      snapshots the buffer under a lock when it starts, and whatever arrives afterwards goes
      to the next update.
    * :meth:`export_model` returns the current policy as a :class:`~relayrl.ModelModule`
      that any actor can serve; :meth:`save_state` / :meth:`load_state` round-trip everything
      needed to resume exactly (weights, optimiser, normalisation statistics, RNG, counters).

    .. versionadded:: 0.1
    """

    #: Registry name (``"ppo"``).
    name: ClassVar[str]
    #: The frozen, kw_only attrs class holding this algorithm's hyperparameters.
    config_class: ClassVar[type[Any]]

    @abc.abstractmethod
    def __init__(
        self,
        obs_space: Any,
        action_space: Any,
        *,
        config: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        """Create the networks and optimisers for the given spaces.

        Raises:
            ConfigError: an unknown config key, a bad value, or spaces the algorithm cannot handle.
        """

    @property
    @abc.abstractmethod
    def config(self) -> Any:
        """The validated configuration (an instance of :attr:`config_class`)."""

    @property
    @abc.abstractmethod
    def steps_per_update(self) -> int:
        """How many environment steps one update consumes (runners may size collection with it)."""

    @abc.abstractmethod
    def receive_trajectory(self, traj: Trajectory) -> bool:
        """Buffer a trajectory; return True when enough data is buffered for :meth:`train`.

        Raises:
            ObservationError: the trajectory does not fit the algorithm's spaces (nothing is buffered).
        """

    @abc.abstractmethod
    def train(self) -> Mapping[str, float]:
        """Run one update on what is buffered and return statistics (losses, KL, ...)."""

    @abc.abstractmethod
    def export_model(self, *, version: int | None = None) -> ModelModule:
        """The current policy as a model module, stamped with ``version`` (default: the update count)."""

    @abc.abstractmethod
    def save_state(self, directory: str | os.PathLike[str]) -> None:
        """Write everything needed to resume training exactly into ``directory`` (created if needed)."""

    @abc.abstractmethod
    def load_state(self, directory: str | os.PathLike[str]) -> None:
        """Restore what :meth:`save_state` wrote.

        Raises:
            ConfigError: the state was written by a different algorithm or for other spaces.
        """

    @classmethod
    def preset_for(cls, env_id: str) -> dict[str, Any]:
        """Per-environment default config overrides (empty when there is none).

        The train CLI merges ``preset_for(env_id)`` under the user's own config, so an explicit
        key always wins.
        """
        return {}

    @classmethod
    def make_config(cls, config: Mapping[str, Any] | None = None) -> Any:
        """Validate a config mapping into :attr:`config_class` (see :func:`make_config`)."""
        return make_config(cls.config_class, config)
