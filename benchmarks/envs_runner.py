"""EnvRunner throughput on CartPole-v1, side by side with what it is built from, in one run.

For 8 and 64 envs (native numpy ``CartPoleVectorEnv``) it measures env steps per second of:

1. ``raw env``: ``gymnasium.make_vec(...).step`` with precomputed random actions (the floor);
2. ``VecEnv``: the relayrl wrapper (action checks, autoreset handling, episode statistics);
3. ``bare loop``: VecEnv + ``policy.forward`` + head sampling, no agent (what a hand-written loop costs);
4. ``EnvRunner``: the runner driving a real agent (steps recorded, trajectories emitted to a MemorySink),
   with a random-weight numpy MLP (4 inputs, 64x64 tanh, 2 actions, value head) and with a tiny
   linear policy (``hidden=()``, closest to a "random policy": almost no forward cost).

Run: ``.venv/bin/python benchmarks/envs_runner.py [--quick]``.
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (sets thread limits first)
import gymnasium as gym
import numpy as np
import trio
from _common import median, table

import relayrl
import relayrl.envs as E
from relayrl.sinks import MemorySink


def raw_env(n: int, steps: int) -> float:
    env = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point")
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 2, size=(steps // n + 1, n))
    t = time.perf_counter()
    for a in actions:
        env.step(a)
    dt = time.perf_counter() - t
    env.close()
    return len(actions) * n / dt


def vec_env(n: int, steps: int, env_id: str = "CartPole-v1") -> float:
    env = E.make(env_id, num_envs=n, seed=0)
    env.reset()
    k = int(env.action_space.flat_dim)
    actions = np.random.default_rng(0).integers(0, k, size=(steps // n + 1, env.num_slots))
    done = 0
    t = time.perf_counter()
    for a in actions:
        done += env.step(a).env_steps
    dt = time.perf_counter() - t
    env.close()
    return done / dt


def bare_loop(model: relayrl.ModelModule, n: int, steps: int) -> float:
    env = E.make("CartPole-v1", num_envs=n, seed=0)
    policy = model.policy("cpu")
    head = relayrl.make_head(model.metadata)
    rng = np.random.default_rng(0)
    cur = env.reset()
    done = 0
    t = time.perf_counter()
    while done < steps:
        act, _ = head.sample(policy.forward(cur.obs), rng)
        cur = env.step(act)
        done += cur.env_steps
    dt = time.perf_counter() - t
    env.close()
    return done / dt


async def runner(model: relayrl.ModelModule, n: int, steps: int, env_id: str = "CartPole-v1") -> tuple[float, float]:
    env = E.make(env_id, num_envs=n, seed=0)
    sink = MemorySink(1_000_000)
    async with relayrl.open_agent(model, seed=0, sinks=[sink], max_traj_length=1000) as agent:
        r = E.EnvRunner(env, agent)
        await r.run(min(steps, 2000))  # warm up
        before = r.statistics()
        t = time.perf_counter()
        after = await r.run(steps)
        dt = time.perf_counter() - t
    recorded = sum(len(tr) for tr in sink.drain())
    assert recorded == after.agent_steps, (recorded, after.agent_steps)
    return (after.steps - before.steps) / dt, after.mean_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    steps = 20_000 if args.quick else 100_000
    mlp = relayrl.mlp_policy(4, relayrl.spaces.Discrete(2), hidden=(64, 64))
    linear = relayrl.mlp_policy(4, relayrl.spaces.Discrete(2), hidden=())
    rows = []
    for n in (8, 64):
        res: dict[str, list[float]] = {k: [] for k in ("raw", "vec", "bare", "run_mlp", "run_lin")}
        for _ in range(args.repeats):
            res["raw"].append(raw_env(n, steps))
            res["vec"].append(vec_env(n, steps))
            res["bare"].append(bare_loop(mlp, n, steps))
            res["run_mlp"].append(trio.run(runner, mlp, n, steps)[0])
            res["run_lin"].append(trio.run(runner, linear, n, steps)[0])
        m = {k: median(v) for k, v in res.items()}
        rows.append([n, m["raw"], m["vec"], m["bare"], m["run_mlp"], m["run_lin"], m["run_mlp"] / m["bare"]])
    table(f"CartPole-v1 env steps/s (median of {args.repeats}, {steps:,} steps each)",
          ["envs", "raw env", "VecEnv", "bare loop (MLP)", "EnvRunner (MLP)", "EnvRunner (linear)",
           "runner / bare"], rows)
    # PettingZoo-style multi-agent env (2 agents per env, stepped one env at a time through dicts)
    coop = "relayrl.envs:coop_nav"
    obs_dim = E.make(coop).observation_space.shape
    coop_mlp = relayrl.mlp_policy(obs_dim, relayrl.spaces.Discrete(5), hidden=(64, 64))
    rows = []
    for n in (8, 64):
        ms = steps // 4
        vec = median([vec_env(n, ms, coop) for _ in range(args.repeats)])
        run = median([trio.run(runner, coop_mlp, n, ms, coop)[0] for _ in range(args.repeats)])
        rows.append([n, vec, run, 2 * run])
    table(f"CoopNav (2 agents) env steps/s (median of {args.repeats}, {steps // 4:,} steps each)",
          ["envs", "VecEnv", "EnvRunner (MLP)", "agent steps/s"], rows)


if __name__ == "__main__":
    main()
