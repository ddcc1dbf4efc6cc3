"""CoopNav: a tiny cooperative navigation task for multi-agent tests and examples (pure numpy).

It follows the PettingZoo ``ParallelEnv`` API shape without importing PettingZoo.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from .._errors import ConfigError
from .._spaces import Box, Discrete

__all__ = ["CoopNavEnv", "coop_nav"]

Array = npt.NDArray[Any]

# stay, up, down, left, right
_MOVES = ((0, 0), (0, 1), (0, -1), (-1, 0), (1, 0))


class CoopNavEnv:
    """``n_agents`` agents on a ``size x size`` grid must cover as many landmarks (a "spread" task).

    * Actions: ``Discrete(5)`` (stay, up, down, left, right; moves stop at the walls).
    * Observation of an agent (``Box`` in [-1, 1]): its own position, the offset to every landmark
      and the offset to every other agent, all divided by ``size - 1``.
    * Shared reward per step (``reward_mode="assignment"``): minus the total grid (L1) distance of
      the best one-to-one assignment of agents to landmarks, divided by ``n_agents * (size - 1)``,
      minus ``collision_penalty`` for every agent beyond the first on a cell. Two agents heading
      for the same landmark leave the other one uncovered and pay for it, so the agents must split
      up. (``reward_mode="nearest"`` charges each landmark's distance to its nearest agent instead,
      a weaker coordination signal.) When every landmark is covered, every agent gets a bonus of
      ``+1`` and the episode terminates for all agents; after ``max_steps`` steps it is truncated.
    * ``state()``: all agent positions then all landmark positions, divided by ``size - 1``
      (for a centralised critic).

    Scores with the defaults (2 agents, 5x5, 25 steps, mean per-agent episode return over 1000
    seeded episodes): uniformly random -16.6; each agent walking to its nearest landmark -11.7;
    the oracle :meth:`oracle_actions` (optimal assignment, then shortest path) +0.16. IPPO with
    relayrl-torch's default hyperparameters passes :attr:`reward_threshold` (-10) after about
    10-20k environment steps and reaches about -8 after 60k (see ``docs/environments.md``).

    .. versionadded:: 0.1
    """

    metadata: ClassVar[dict[str, Any]] = {"name": "coop_nav_v0", "render_modes": [], "is_parallelizable": True}
    #: The mean episode return (per agent) at which the task counts as solved.
    reward_threshold: ClassVar[float] = -10.0
    render_mode = None

    def __init__(self, n_agents: int = 2, size: int = 5, max_steps: int = 25, collision_penalty: float = 0.5,
                 reward_mode: str = "assignment") -> None:
        if reward_mode not in ("assignment", "nearest"):
            raise ConfigError(f"CoopNavEnv reward_mode must be 'assignment' or 'nearest', got {reward_mode!r}")
        self.reward_mode = reward_mode
        if not 1 <= int(n_agents) <= 4:
            raise ConfigError(f"CoopNavEnv n_agents must be in 1..4, got {n_agents}")
        if int(size) < 2 or int(size) ** 2 < 2 * int(n_agents):
            raise ConfigError(f"CoopNavEnv size must be >= 2 and leave room for the landmarks, got {size}")
        if int(max_steps) < 1:
            raise ConfigError(f"CoopNavEnv max_steps must be >= 1, got {max_steps}")
        self.n_agents = int(n_agents)
        self.size = int(size)
        self.max_steps = int(max_steps)
        self.collision_penalty = float(collision_penalty)
        self.possible_agents: list[str] = [f"agent_{i}" for i in range(self.n_agents)]
        self.agents: list[str] = []
        n = self.n_agents
        self._obs_space = Box(-1.0, 1.0, (2 + 2 * n + 2 * (n - 1),))
        self._act_space = Discrete(5)
        self.state_space = Box(0.0, 1.0, (4 * n,))
        self._rng = np.random.default_rng()
        self._pos: list[tuple[int, int]] = [(0, 0)] * n
        self._landmarks: list[tuple[int, int]] = [(0, 0)] * n
        self._t = 0
        self._scale = 1.0 / (self.size - 1)
        self._others = [[j for j in range(n) if j != i] for i in range(n)]
        self._perms = list(itertools.permutations(range(n)))

    def observation_space(self, agent: str) -> Box:
        """The observation space of ``agent`` (the same for every agent)."""
        return self._obs_space

    def action_space(self, agent: str) -> Discrete:
        """The action space of ``agent`` (the same for every agent)."""
        return self._act_space

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, Array], dict[str, dict[str, Any]]]:
        """Start an episode; ``seed`` reseeds the environment's random generator.

        ``options={"agents": [(x, y), ...], "landmarks": [(x, y), ...]}`` places them by hand.
        """
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        cells = self.size * self.size
        picks = self._rng.choice(cells, size=2 * self.n_agents, replace=False).tolist()
        self._landmarks = [(c // self.size, c % self.size) for c in picks[: self.n_agents]]
        self._pos = [(c // self.size, c % self.size) for c in picks[self.n_agents:]]
        for key in ("agents", "landmarks"):
            if options and key in options:
                cells_given = [(int(x), int(y)) for x, y in options[key]]
                if len(cells_given) != self.n_agents or not all(
                        0 <= x < self.size and 0 <= y < self.size for x, y in cells_given):
                    raise ValueError(f"options[{key!r}] must hold {self.n_agents} cells of the {self.size}x{self.size} "
                                     f"grid, got {options[key]!r}")
                if key == "agents":
                    self._pos = cells_given
                else:
                    self._landmarks = cells_given
        self._t = 0
        self.agents = list(self.possible_agents)
        return self._observations(), {a: {} for a in self.agents}

    def _observations(self) -> dict[str, Array]:
        out: dict[str, Array] = {}
        scale = self._scale
        for i, agent in enumerate(self.possible_agents):
            x, y = self._pos[i]
            vals = [x, y]
            for lx, ly in self._landmarks:
                vals += (lx - x, ly - y)
            for j in self._others[i]:
                ox, oy = self._pos[j]
                vals += (ox - x, oy - y)
            out[agent] = np.array(vals, dtype=np.float32) * scale
        return out

    def _min_distances(self) -> list[int]:
        """For each landmark, the grid (L1) distance to its nearest agent."""
        return [min(abs(lx - x) + abs(ly - y) for x, y in self._pos) for lx, ly in self._landmarks]

    def _assignment(self) -> tuple[int, tuple[int, ...]]:
        """(total distance, landmark of each agent) of the best one-to-one agent-landmark assignment."""
        best: tuple[int, tuple[int, ...]] | None = None
        for perm in self._perms:
            cost = sum(abs(self._landmarks[perm[i]][0] - x) + abs(self._landmarks[perm[i]][1] - y)
                       for i, (x, y) in enumerate(self._pos))
            if best is None or cost < best[0]:
                best = (cost, perm)
        assert best is not None
        return best

    def step(self, actions: dict[str, Any]) -> tuple[dict[str, Array], dict[str, float], dict[str, bool],
                                                     dict[str, bool], dict[str, dict[str, Any]]]:
        """Move every live agent; returns observations, rewards, terminations, truncations, infos."""
        if not self.agents:
            raise RuntimeError("CoopNavEnv.step() called after the episode ended; call reset()")
        hi = self.size - 1
        for i, agent in enumerate(self.possible_agents):
            a = int(actions.get(agent, 0))
            if not 0 <= a < 5:
                raise ValueError(f"CoopNavEnv action for {agent} must be in 0..4, got {a}")
            dx, dy = _MOVES[a]
            x, y = self._pos[i]
            self._pos[i] = (min(max(x + dx, 0), hi), min(max(y + dy, 0), hi))
        self._t += 1
        dist = self._min_distances()
        if self.reward_mode == "assignment":
            reward = -self._assignment()[0] / self.n_agents * self._scale
        else:
            reward = -sum(dist) / len(dist) * self._scale
        if self.collision_penalty:
            reward -= self.collision_penalty * (self.n_agents - len(set(self._pos)))
        covered = not any(dist)
        if covered:
            reward += 1.0
        truncated = not covered and self._t >= self.max_steps
        obs = self._observations()
        agents = self.agents
        rewards = {a: reward for a in agents}
        terms = {a: covered for a in agents}
        truncs = {a: truncated for a in agents}
        infos: dict[str, dict[str, Any]] = {a: {} for a in agents}
        if covered or truncated:
            self.agents = []
        return obs, rewards, terms, truncs, infos

    def state(self) -> Array:
        """Global state: agent positions then landmark positions, divided by ``size - 1``."""
        return np.array([*itertools.chain(*self._pos), *itertools.chain(*self._landmarks)], np.float32) * self._scale

    def oracle_actions(self) -> dict[str, int]:
        """Actions of a scripted near-optimal policy (optimal assignment, then greedy moves).

        Used to document what a good policy scores; not part of the PettingZoo API.
        """
        best = self._assignment()[1]
        out: dict[str, int] = {}
        for i, agent in enumerate(self.possible_agents):
            dx = self._landmarks[best[i]][0] - self._pos[i][0]
            dy = self._landmarks[best[i]][1] - self._pos[i][1]
            if dx != 0:
                out[agent] = 4 if dx > 0 else 3
            elif dy != 0:
                out[agent] = 1 if dy > 0 else 2
            else:
                out[agent] = 0
        return out

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"CoopNavEnv(n_agents={self.n_agents}, size={self.size}, max_steps={self.max_steps})"


def coop_nav(**kwargs: Any) -> CoopNavEnv:
    """Factory for ``relayrl.envs.make("relayrl.envs:coop_nav", num_envs=..., env_kwargs=...)``.

    .. versionadded:: 0.1
    """
    return CoopNavEnv(**kwargs)


coop_nav.reward_threshold = CoopNavEnv.reward_threshold  # type: ignore[attr-defined]
