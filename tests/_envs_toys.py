"""Toy environments shared by the relayrl.envs tests."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from relayrl.spaces import Box, Discrete


class CountEnv(gym.Env[np.ndarray, np.int64]):
    """Observation t, reward t after step t; terminates after ``length`` steps. Optional masks."""

    def __init__(self, length: int = 3, mask: bool = False) -> None:
        self.length = length
        self.mask = mask
        self.observation_space = gym.spaces.Box(0.0, 100.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0
        self.actions: list[int] = []

    def _info(self) -> dict[str, Any]:
        return {"action_mask": np.array([1, self.t % 2 == 0], dtype=np.int8)} if self.mask else {}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), self._info()

    def step(self, action: np.int64) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.actions.append(int(action))
        self.t += 1
        return np.array([self.t], np.float32), float(self.t), self.t >= self.length, False, self._info()


def count_vec(mode: AutoresetMode, mask: bool = False) -> SyncVectorEnv:
    return SyncVectorEnv([lambda: CountEnv(3, mask), lambda: gym.wrappers.TimeLimit(CountEnv(10, mask), 4)],
                         autoreset_mode=mode)


class StaggerEnv:
    """Parallel env: agent_0 terminates after 2 steps, agent_1 is truncated after 4."""

    metadata: ClassVar[dict[str, Any]] = {"name": "stagger"}

    def __init__(self) -> None:
        self.possible_agents = ["agent_0", "agent_1"]
        self.agents: list[str] = []
        self.t = 0
        self.received: list[dict[str, Any]] = []

    def observation_space(self, agent: str) -> Box:
        return Box(-10.0, 10.0, (2,))

    def action_space(self, agent: str) -> Discrete:
        return Discrete(3)

    def _obs(self, agent: str) -> np.ndarray:
        return np.array([self.t, self.possible_agents.index(agent) + 1], np.float32)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        self.t = 0
        self.agents = list(self.possible_agents)
        return {a: self._obs(a) for a in self.agents}, {a: {"action_mask": np.array([1, 1, 0])} for a in self.agents}

    def step(self, actions: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float], dict[str, bool],
                                                     dict[str, bool], dict[str, Any]]:
        assert set(actions) == set(self.agents), (actions, self.agents)
        self.received.append(dict(actions))
        self.t += 1
        obs = {a: self._obs(a) for a in self.agents}
        rew = {a: float(self.t * (i + 1)) for i, a in enumerate(self.possible_agents) if a in self.agents}
        term = {a: a == "agent_0" and self.t == 2 for a in self.agents}
        trunc = {a: a == "agent_1" and self.t == 4 for a in self.agents}
        infos = {a: {"action_mask": np.array([1, self.t % 2, 1])} for a in self.agents}
        self.agents = [a for a in self.agents if not (term[a] or trunc[a])]
        return obs, rew, term, trunc, infos
