"""A small but real Algorithm for the training-server, train and CLI tests.

It "trains" by exporting a freshly initialised numpy MLP whose seed is the update count, so
every version is a different, valid model; it counts everything it receives and trains on,
and its state round-trips through save_state/load_state. Used where the torch algorithms
are not the point of the test (or are not installed).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

import relayrl
from relayrl._algorithm_api import Algorithm, make_config


@attrs.frozen(kw_only=True)
class StandinConfig:
    steps_per_update: int = 20
    fail_on_update: int = -1


class StandinAlgorithm(Algorithm):
    name = "standin"
    config_class = StandinConfig

    def __init__(self, obs_space: Any, action_space: Any, *, config: Mapping[str, Any] | None = None,
                 seed: int = 0) -> None:
        self._config = make_config(StandinConfig, config)
        self.obs_shape = tuple(relayrl.spaces.from_gymnasium(obs_space).shape)
        self.action_space = relayrl.spaces.from_gymnasium(action_space)
        self.seed = seed
        self.updates = 0
        self.received_steps = 0
        self.trained_steps = 0
        self._buffer: list[relayrl.Trajectory] = []
        self._lock = threading.Lock()

    @property
    def config(self) -> StandinConfig:
        return self._config

    @property
    def steps_per_update(self) -> int:
        return self._config.steps_per_update

    def receive_trajectory(self, traj: relayrl.Trajectory) -> bool:
        if tuple(traj.obs.shape[1:]) != self.obs_shape:
            raise relayrl.ObservationError(f"expected observations of shape {self.obs_shape}, got {traj.obs.shape[1:]}")
        with self._lock:
            self._buffer.append(traj)
            self.received_steps += len(traj)
            return sum(len(t) for t in self._buffer) >= self._config.steps_per_update

    def train(self) -> Mapping[str, float]:
        with self._lock:
            batch, self._buffer = self._buffer, []
        if self.updates == self._config.fail_on_update:
            raise RuntimeError(f"update {self.updates} failed on purpose")
        steps = sum(len(t) for t in batch)
        self.updates += 1
        self.trained_steps += steps
        return {"steps": float(steps), "updates": float(self.updates)}

    def export_model(self, *, version: int | None = None) -> relayrl.ModelModule:
        seed = self.seed * 1000 + self.updates
        model = relayrl.mlp_policy(self.obs_shape, self.action_space, hidden=(16,), seed=seed)
        return model.with_version(self.updates if version is None else version)

    def save_state(self, directory: str | os.PathLike[str]) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "state.json").write_text(json.dumps({"updates": self.updates, "trained_steps": self.trained_steps,
                                                  "received_steps": self.received_steps, "seed": self.seed}))

    def load_state(self, directory: str | os.PathLike[str]) -> None:
        state = json.loads((Path(directory) / "state.json").read_text())
        self.updates = state["updates"]
        self.trained_steps = state["trained_steps"]
        self.received_steps = state["received_steps"]
