"""Test helper: collect relayrl Trajectories from real gymnasium environments with a model module.

It mirrors what relayrl's env runner does (one actor per environment; a trajectory ends at a
terminal state, at an environment time limit with ``final_obs``, or at the end of a collection
segment with ``final_obs``), so the algorithms can be trained and measured without the agent
runtime. Also usable as a script: ``python _algo_rollout.py ppo CartPole-v1 --seeds 0 1 2``.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

import relayrl
from relayrl import ModelModule, Trajectory
from relayrl.abc import Algorithm
from relayrl.spaces import Box


class Collector:
    """``num_envs`` copies of a gymnasium env stepped in lockstep with one batched policy forward."""

    def __init__(self, env_id: str | Callable[[], gym.Env[Any, Any]], num_envs: int, seed: int = 0) -> None:
        self.envs = [gym.make(env_id) if isinstance(env_id, str) else env_id() for _ in range(num_envs)]
        self.rng = np.random.default_rng(seed + 12345)
        self.obs = np.stack([env.reset(seed=seed * 1000 + i)[0] for i, env in enumerate(self.envs)]).astype(np.float32)
        self.actor_ids = [uuid.UUID(int=seed * 1000 + i) for i in range(num_envs)]
        self.episode = [0] * num_envs
        self.ep_return = [0.0] * num_envs
        self.episode_returns: list[float] = []
        self.total_steps = 0
        space = self.envs[0].action_space
        self._box = isinstance(relayrl.spaces.from_gymnasium(space), Box)
        self._low = getattr(space, "low", None)
        self._high = getattr(space, "high", None)

    def collect(self, model: ModelModule, n_steps: int) -> list[Trajectory]:
        """Step every env ``n_steps`` times; return the finished trajectories (segment ends are truncated)."""
        policy = model.policy()
        head = relayrl.make_head(model.metadata)
        version = model.version or 0
        n = len(self.envs)
        cols: list[dict[str, list[Any]]] = [self._new_cols() for _ in range(n)]
        out: list[Trajectory] = []
        for step in range(n_steps):
            ho = policy.forward(self.obs)
            act, logp = head.sample(ho, self.rng)
            value = ho.value if ho.value is not None else np.full(n, np.nan, np.float32)
            for i, env in enumerate(self.envs):
                a = act[i]
                env_a = np.clip(a, self._low, self._high) if self._box else int(a)
                nxt, r, term, trunc, _ = env.step(env_a)
                c = cols[i]
                c["obs"].append(self.obs[i].copy())
                c["act"].append(a)
                c["reward"].append(float(r))
                c["done"].append(bool(term))
                c["logp"].append(float(logp[i]))
                c["value"].append(float(value[i]))
                self.ep_return[i] += float(r)
                last = step == n_steps - 1
                if term or trunc:
                    out.append(self._emit(i, c, version, truncated=not term, final_obs=None if term else nxt))
                    self.episode_returns.append(self.ep_return[i])
                    self.ep_return[i] = 0.0
                    self.episode[i] += 1
                    nxt, _ = env.reset()
                    cols[i] = self._new_cols()
                elif last:
                    out.append(self._emit(i, c, version, truncated=True, final_obs=nxt))
                self.obs[i] = nxt
            self.total_steps += n
        return out

    @staticmethod
    def _new_cols() -> dict[str, list[Any]]:
        return {"obs": [], "act": [], "reward": [], "done": [], "logp": [], "value": []}

    def _emit(self, i: int, c: dict[str, list[Any]], version: int, *, truncated: bool, final_obs: Any) -> Trajectory:
        t = len(c["reward"])
        return Trajectory(
            obs=np.asarray(c["obs"], dtype=np.float32), act=np.asarray(c["act"]),
            reward=np.asarray(c["reward"], dtype=np.float32), done=np.asarray(c["done"], dtype=bool),
            logp=np.asarray(c["logp"], dtype=np.float32), value=np.asarray(c["value"], dtype=np.float32),
            model_version=np.full(t, version, dtype=np.int64), actor_id=self.actor_ids[i], episode=self.episode[i],
            env_id=str(i), truncated=truncated,
            final_obs=None if final_obs is None else np.asarray(final_obs, dtype=np.float32),
        )

    def mean_return(self, last: int) -> float:
        """Mean of the last ``last`` episode returns (NaN before any episode ended)."""
        r = self.episode_returns[-last:]
        return float(np.mean(r)) if r else float("nan")


class MultiCollector:
    """``num_envs`` PettingZoo-style parallel envs; every agent of every env is one actor (shared policy).

    Each trajectory carries the agent id in ``env_id`` and the env's global ``state()`` per step
    in ``extras["state"]``. An episode's return is the mean over its agents.
    """

    def __init__(self, make_env: Callable[[], Any], num_envs: int, seed: int = 0) -> None:
        self.envs = [make_env() for _ in range(num_envs)]
        self.rng = np.random.default_rng(seed + 777)
        self.obs = [env.reset(seed=seed * 1000 + i)[0] for i, env in enumerate(self.envs)]
        self.ids: dict[tuple[int, str], uuid.UUID] = {}
        self.episode = [0] * num_envs
        self.ep_return: list[dict[str, float]] = [{} for _ in range(num_envs)]
        self.episode_returns: list[float] = []
        self.total_steps = 0

    def _id(self, i: int, agent: str) -> uuid.UUID:
        return self.ids.setdefault((i, agent), uuid.uuid4())

    def collect(self, model: ModelModule | None, n_steps: int) -> list[Trajectory]:
        """Step every env ``n_steps`` times (``model=None``: uniformly random actions, nothing returned)."""
        policy = None if model is None else model.policy()
        head = None if model is None else relayrl.make_head(model.metadata)
        version = 0 if model is None else (model.version or 0)
        cols: dict[tuple[int, str], dict[str, list[Any]]] = {}
        out: list[Trajectory] = []
        for step in range(n_steps):
            keys = [(i, a) for i, env in enumerate(self.envs) for a in env.agents]
            obs = np.stack([np.asarray(self.obs[i][a], np.float32) for i, a in keys])
            states = [np.asarray(env.state(), np.float32) for env in self.envs]
            if policy is None or head is None:
                act = np.array([relayrl.spaces.from_gymnasium(self.envs[i].action_space(a)).sample(self.rng)
                                for i, a in keys])
                logp = np.zeros(len(keys), np.float32)
            else:
                act, logp = head.sample(policy.forward(obs), self.rng)
            actions: list[dict[str, Any]] = [{} for _ in self.envs]
            for k, (i, a) in enumerate(keys):
                actions[i][a] = int(act[k])
            results = [env.step(actions[i]) for i, env in enumerate(self.envs)]
            for k, (i, a) in enumerate(keys):
                nxt, rew, term, trunc, _ = results[i]
                c = cols.setdefault((i, a), {"obs": [], "act": [], "reward": [], "done": [], "logp": [], "state": []})
                c["obs"].append(obs[k])
                c["act"].append(act[k])
                c["reward"].append(float(rew[a]))
                c["done"].append(bool(term[a]))
                c["logp"].append(float(logp[k]))
                c["state"].append(states[i])
                self.ep_return[i][a] = self.ep_return[i].get(a, 0.0) + float(rew[a])
                ended = bool(term[a] or trunc[a])
                if ended or step == n_steps - 1:
                    if policy is not None:
                        out.append(self._emit(i, a, cols.pop((i, a)), version, term=bool(term[a]),
                                              final_obs=None if term[a] else nxt[a]))
                    else:
                        cols.pop((i, a))
            for i, env in enumerate(self.envs):
                if not env.agents:
                    self.episode_returns.append(float(np.mean(list(self.ep_return[i].values()))))
                    self.ep_return[i] = {}
                    self.episode[i] += 1
                    self.obs[i] = env.reset()[0]
                else:
                    self.obs[i] = results[i][0]
            self.total_steps += len(self.envs)
        return out

    def _emit(self, i: int, agent: str, c: dict[str, list[Any]], version: int, *, term: bool,
              final_obs: Any) -> Trajectory:
        t = len(c["reward"])
        return Trajectory(
            obs=np.asarray(c["obs"], dtype=np.float32), act=np.asarray(c["act"], dtype=np.int64),
            reward=np.asarray(c["reward"], dtype=np.float32), done=np.asarray(c["done"], dtype=bool),
            logp=np.asarray(c["logp"], dtype=np.float32), value=np.full(t, np.nan, np.float32),
            model_version=np.full(t, version, dtype=np.int64), actor_id=self._id(i, agent),
            episode=self.episode[i], env_id=agent, truncated=not term,
            final_obs=None if final_obs is None else np.asarray(final_obs, dtype=np.float32),
            extras={"state": np.asarray(c["state"], dtype=np.float32)},
        )

    def mean_return(self, last: int) -> float:
        """Mean of the last ``last`` episode returns."""
        r = self.episode_returns[-last:]
        return float(np.mean(r)) if r else float("nan")


def run_multi(algo: Algorithm, make_env: Callable[[], Any], max_steps: int, *, seed: int = 0) -> MultiCollector:
    """Train a multi-agent ``algo`` for ``max_steps`` env steps; return the collector (episode returns)."""
    cfg = algo.config
    col = MultiCollector(make_env, cfg.num_envs, seed)
    while col.total_steps < max_steps:
        for traj in col.collect(algo.export_model(), cfg.n_steps):
            algo.receive_trajectory(traj)
        algo.train()
    return col


def random_multi_return(make_env: Callable[[], Any], episodes: int, seed: int = 0) -> float:
    """Mean episode return (mean over agents) of uniformly random actions."""
    col = MultiCollector(make_env, 4, seed)
    while len(col.episode_returns) < episodes:
        col.collect(None, 25)
    return float(np.mean(col.episode_returns[:episodes]))


def run(
    algo: Algorithm,
    env_id: str | Callable[[], gym.Env[Any, Any]],
    max_steps: int,
    *,
    seed: int = 0,
    target: float | None = None,
    window: int = 100,
) -> dict[str, Any]:
    """Train ``algo`` on ``env_id`` until ``mean(last window returns) >= target`` or ``max_steps``."""
    cfg = algo.config
    col = Collector(env_id, cfg.num_envs, seed)
    start = time.perf_counter()
    solved_at = None
    stats: dict[str, Any] = {}
    train_time = 0.0
    grad_steps = 0
    while col.total_steps < max_steps:
        model = algo.export_model()
        for traj in col.collect(model, cfg.n_steps):
            algo.receive_trajectory(traj)
        t1 = time.perf_counter()
        stats = dict(algo.train())
        train_time += time.perf_counter() - t1
        grad_steps += int(stats.get("minibatches", 0))
        if target is not None and len(col.episode_returns) >= window and col.mean_return(window) >= target:
            solved_at = col.total_steps
            break
    return {
        "steps": col.total_steps, "solved_at": solved_at, "seconds": time.perf_counter() - start,
        "train_seconds": train_time, "grad_steps": grad_steps,
        "episodes": len(col.episode_returns), "mean_return": col.mean_return(window), "returns": col.episode_returns,
        "last_stats": stats,
    }


def evaluate(model: ModelModule, env_id: str, episodes: int, seed: int = 100) -> float:
    """Mean return of the deterministic policy over ``episodes`` episodes."""
    env = gym.make(env_id)
    policy = model.policy()
    head = relayrl.make_head(model.metadata)
    rng = np.random.default_rng(seed)
    space: Any = env.action_space
    total = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done = False
        ret = 0.0
        while not done:
            a, _ = head.sample(policy.forward(np.asarray(obs, np.float32)[None]), rng, deterministic=True)
            env_a = np.clip(a[0], space.low, space.high) if hasattr(space, "low") else int(a[0])
            obs, r, term, trunc, _ = env.step(env_a)
            ret += float(r)
            done = term or trunc
        total.append(ret)
    return float(np.mean(total))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("algo")
    ap.add_argument("env")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=200_000)
    ap.add_argument("--target", type=float, default=None)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key=json")
    args = ap.parse_args(argv)
    import json

    cls = relayrl.algorithms.get(args.algo)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    for seed in args.seeds:
        env = gym.make(args.env)
        cfg = {**cls.preset_for(args.env), **overrides}
        t0 = time.perf_counter()
        algo = cls(env.observation_space, env.action_space, config=cfg, seed=seed)
        res = run(algo, args.env, args.steps, seed=seed, target=args.target, window=args.window)
        ev = evaluate(algo.export_model(), args.env, 10)
        print(f"seed={seed} solved_at={res['solved_at']} steps={res['steps']} seconds={res['seconds']:.2f} "
              f"train={res['train_seconds']:.2f} "
              f"(with init {time.perf_counter() - t0:.2f}) episodes={res['episodes']} "
              f"mean{args.window}={res['mean_return']:.1f} eval10={ev:.1f}", flush=True)


if __name__ == "__main__":
    main()
