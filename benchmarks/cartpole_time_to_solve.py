"""Time to solve CartPole-v1: `relayrl train CartPole-v1` vs Stable-Baselines3 PPO (rl-zoo hyperparameters).

Each run is a separate process, timed as a whole (imports, env creation, training, saving), with
one torch/BLAS thread. Both stop at the same criterion: the mean return of the last 100 episodes
reaches 475. Runs are interleaved (relayrl s0, SB3 s0, relayrl s1, ...).

    .venv/bin/python benchmarks/cartpole_time_to_solve.py [--seeds 0 1 2] [--skip-sb3]

SB3 is an optional benchmark dependency: `pip install -c constraints.txt stable-baselines3`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table

TARGET = 475.0
WINDOW = 100

# rl-baselines3-zoo hyperparams/ppo.yml, CartPole-v1.
SB3_ZOO = {"n_envs": 8, "n_timesteps": 100_000, "n_steps": 32, "batch_size": 256, "gae_lambda": 0.8,
           "gamma": 0.98, "n_epochs": 20, "ent_coef": 0.0, "learning_rate": 0.001, "clip_range": 0.2}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    return env


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_relayrl(seed: int) -> dict[str, object]:
    script = Path(sys.executable).with_name("relayrl")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "relayrl"]
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), _child_cpu()
        proc = subprocess.run([*cmd, "train", "CartPole-v1", "--seed", str(seed), "--run-dir", f"{tmp}/run",
                               "--no-progress"], capture_output=True, text=True, env=_env(), check=False)
        wall, cpu = time.perf_counter() - t0, _child_cpu() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"relayrl train failed:\n{proc.stderr}")
    m = re.search(r"^(solved|finished) CartPole-v1 in ([\d.]+) s: mean return ([-\d.na/]+) .* after ([\d,]+) steps",
                  proc.stdout, re.M)
    if m is None:
        raise RuntimeError(f"unexpected relayrl output:\n{proc.stdout}")
    return {"solved": m.group(1) == "solved", "steps": int(m.group(4).replace(",", "")),
            "train_s": float(m.group(2)), "wall_s": wall, "cpu_s": cpu, "mean_return": m.group(3)}


def run_sb3(seed: int) -> dict[str, object]:
    t0, c0 = time.perf_counter(), _child_cpu()
    proc = subprocess.run([sys.executable, __file__, "--sb3-worker", str(seed)], capture_output=True, text=True,
                          env=_env(), check=False)
    wall, cpu = time.perf_counter() - t0, _child_cpu() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"SB3 run failed:\n{proc.stderr[-3000:]}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    result["cpu_s"] = cpu
    return result


def sb3_worker(seed: int) -> None:
    """One SB3 PPO run (zoo hyperparameters) that stops when the last-100 mean reaches the target."""
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    t0 = time.perf_counter()

    def linear(start: float):  # type: ignore[no-untyped-def]
        return lambda progress_remaining: progress_remaining * start

    class StopAtTarget(BaseCallback):
        solved_at: int | None = None

        def _on_step(self) -> bool:
            buf = self.model.ep_info_buffer
            if buf is not None and len(buf) >= WINDOW and np.mean([e["r"] for e in buf]) >= TARGET:
                self.solved_at = self.num_timesteps
                return False
            return True

    z = SB3_ZOO
    env = make_vec_env("CartPole-v1", n_envs=z["n_envs"], seed=seed)
    model = PPO("MlpPolicy", env, n_steps=z["n_steps"], batch_size=z["batch_size"], gae_lambda=z["gae_lambda"],
                gamma=z["gamma"], n_epochs=z["n_epochs"], ent_coef=z["ent_coef"],
                learning_rate=linear(z["learning_rate"]), clip_range=linear(z["clip_range"]), seed=seed,
                device="cpu", verbose=0)
    cb = StopAtTarget()
    model.learn(total_timesteps=z["n_timesteps"], callback=cb)
    buf = model.ep_info_buffer or []
    mean = float(np.mean([e["r"] for e in buf])) if buf else float("nan")
    print(json.dumps({"solved": cb.solved_at is not None, "steps": cb.solved_at or model.num_timesteps,
                      "train_s": time.perf_counter() - t0, "mean_return": f"{mean:.1f}"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-sb3", action="store_true")
    parser.add_argument("--sb3-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sb3_worker is not None:
        sb3_worker(args.sb3_worker)
        return
    have_sb3 = not args.skip_sb3
    if have_sb3:
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            print("stable-baselines3 is not installed: SB3 runs skipped "
                  "(pip install -c constraints.txt stable-baselines3)")
            have_sb3 = False
    rows = []
    for seed in args.seeds:
        runs = [("relayrl train CartPole-v1", run_relayrl)]
        if have_sb3:
            runs.append(("SB3 PPO (zoo, 100k budget)", run_sb3))
        for name, fn in runs:
            r = fn(seed)
            rows.append([name, seed, "yes" if r["solved"] else "no", r["steps"], r["mean_return"],
                         round(float(r["train_s"]), 1), round(float(r["wall_s"]), 1), round(float(r["cpu_s"]), 1)])
            print(f"{name} seed {seed}: {r}", flush=True)
    table(f"CartPole-v1 time to solve (mean of last {WINDOW} >= {TARGET:g}), whole process, 1 thread",
          ["framework", "seed", "solved", "env steps", "final mean-100", "train s", "process wall s",
           "process CPU s"], rows)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(CPU s = user + system time of the process: less sensitive to other load than wall time)")


if __name__ == "__main__":
    main()
