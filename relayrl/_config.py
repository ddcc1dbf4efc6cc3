"""Configuration files: attrs configs loaded from TOML or JSON, with errors naming the bad key.

A training run is described by :class:`TrainConfig`. A file holds its keys at the top level
(or under a ``[train]`` table); the algorithm's hyperparameters go in ``[algo_config]`` and the
environment's constructor arguments in ``[env_kwargs]``::

    env = "CartPole-v1"
    algo = "ppo"
    seed = 0
    target_return = 475.0

    [algo_config]
    lr = 0.001
    n_steps = 32

The algorithm validates ``algo_config`` itself (its own config class), so a misspelt
hyperparameter is reported with the algorithm's list of known keys.

.. versionadded:: 0.1
"""

# No ``from __future__ import annotations`` here: TrainConfig is re-exported as ``relayrl.TrainConfig``
# (its __module__ rewritten), and the key/type checks read its annotations as real objects.

import json
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from ._algorithm_api import make_config
from ._errors import ConfigError

__all__ = ["TrainConfig", "load_config_file"]

TrainMode = Literal["sync", "async"]
ExportBackend = Literal["numpy", "onnx", "torch"]


def _opt_positive_int(inst: Any, attr: Any, value: Any) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"TrainConfig.{attr.name} must be >= 1, got {value!r}")


def _positive_int(inst: Any, attr: Any, value: Any) -> None:
    if value < 1:
        raise ConfigError(f"TrainConfig.{attr.name} must be >= 1, got {value!r}")


def _finite(inst: Any, attr: Any, value: Any) -> None:
    if value is not None and not math.isfinite(value):
        raise ConfigError(f"TrainConfig.{attr.name} must be a finite number, got {value!r}")


def _non_negative(inst: Any, attr: Any, value: Any) -> None:
    if value < 0:
        raise ConfigError(f"TrainConfig.{attr.name} must be >= 0, got {value!r}")


def _dict(value: Any) -> dict[str, Any]:
    return dict(value or {})


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Everything that describes a training run (what ``relayrl train`` resolves and saves).

    .. versionadded:: 0.1
    """

    #: A gymnasium id, or ``"module:callable"`` returning a gymnasium env or a PettingZoo parallel env
    #: (library callers may pass anything :func:`relayrl.envs.make` accepts).
    env: Any
    #: Algorithm name in the ``relayrl.algorithms`` registry.
    algo: str = "ppo"
    #: Parallel environments (None: the algorithm's ``num_envs`` setting, else 8).
    num_envs: int | None = attrs.field(default=None, validator=_opt_positive_int)
    #: Environment-step budget (None: the algorithm's ``total_steps`` setting, else 1,000,000).
    total_steps: int | None = attrs.field(default=None, validator=_opt_positive_int)
    #: Stop once the mean return of the last ``window`` episodes reaches it (None: the env's
    #: reward threshold; runs without either use the whole budget).
    target_return: float | None = attrs.field(default=None, validator=_finite)
    #: Episodes averaged for the stopping rule and the reported mean return.
    window: int = attrs.field(default=100, validator=_positive_int)
    #: Seed of the environments, the agent's sampling and the algorithm.
    seed: int = attrs.field(default=0, validator=_non_negative)
    #: Model format the algorithm exports (``numpy``: served without torch).
    backend: ExportBackend = "numpy"
    #: ``"sync"``: collection pauses after each full rollout until the new model arrives (the fast,
    #: stable loop for on-policy algorithms); ``"async"``: collection never waits.
    mode: TrainMode = "sync"
    #: Checkpoint every this many updates (and at the end).
    checkpoint_every: int = attrs.field(default=10, validator=_positive_int)
    #: Write TensorBoard event files into ``<run_dir>/tensorboard``.
    tensorboard: bool = False
    #: Constructor keyword arguments of the environment.
    env_kwargs: dict[str, Any] = attrs.field(factory=dict, converter=_dict)
    #: Hyperparameters of the algorithm (validated by the algorithm's config class).
    algo_config: dict[str, Any] = attrs.field(factory=dict, converter=_dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Build from a mapping (a parsed file), checking every key and value.

        Raises:
            ConfigError: an unknown key, a value of the wrong type, or a missing ``env``; the
                message names the key.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a training config must be a table/object, got {type(data).__name__}")
        if "env" not in data:
            raise ConfigError("TrainConfig: missing key 'env' (a gymnasium id or module:callable)")
        for key in ("env_kwargs", "algo_config"):
            if key in data and not isinstance(data[key], Mapping):
                raise ConfigError(f"TrainConfig.{key}: expected a table/object, got {data[key]!r}")
        return make_config(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serialisable when the user's values are)."""
        return attrs.asdict(self)


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML (``.toml``) or JSON (anything else) config file into a dict.

    A top-level ``train`` table, if present, is used as the config.

    Raises:
        ConfigError: the file cannot be read or parsed (the message names the file and where).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from exc
    try:
        data: Any = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a table/object at the top level")
    if "train" in data:
        train = data["train"]
        if not isinstance(train, dict):
            raise ConfigError(f"{p}: 'train' must be a table/object")
        data = train
    return dict(data)
