"""numpy vs CuPy backend: forward + action sampling throughput, side by side in one run.

For batch sizes 1, 256, 4096 and 65536 (observations on the host, actions and log-probs back
on the host, as the agent uses them) it measures:

* ``numpy``: the built-in numpy backend + relayrl's host head;
* ``cupy+host head``: the cupy backend (device arrays) + relayrl's host head (copies the
  head outputs back and samples with numpy);
* ``cupy+device head``: the cupy backend + :func:`relayrl_cupy.make_device_head` (sampling
  kernels on the GPU, only actions and log-probs come back).

Two models: ``tiny`` (4 inputs, 64x64 tanh, 2 actions, value head: CartPole-sized) and ``wide``
(64 inputs, 256x256 tanh, 18 actions, value head). The CuPy columns read "n/a" where no CUDA
device is usable.

Run: ``.venv/bin/python benchmarks/cupy_backend.py [--quick] [--batches 1,256]``.
"""

from __future__ import annotations

import argparse
import functools
import platform
import time
from collections.abc import Callable
from typing import Any

import _common  # noqa: F401  (sets thread limits before numpy loads its BLAS)
import numpy as np
from _common import table

import relayrl
from relayrl.spaces import Discrete

MODELS = {"tiny": (4, (64, 64), 2), "wide": (64, (256, 256), 18)}


def _forward_sample(head: Any, policy: Any, obs: Any, rng: np.random.Generator) -> Any:
    return head.sample(policy.forward(obs), rng)


def _rate(step: Callable[[], Any], batch: int, min_time: float) -> tuple[float, float]:
    """(actions/s, µs per call) of ``step`` over at least ``min_time`` seconds after warm-up."""
    for _ in range(3):
        step()
    n, start = 0, time.perf_counter()
    while True:
        step()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and n >= 3:
            return batch * n / elapsed, elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter measurements (0.1 s each instead of 0.5 s)")
    parser.add_argument("--batches", default="1,256,4096,65536", help="comma-separated batch sizes")
    args = parser.parse_args()
    min_time = 0.1 if args.quick else 0.5
    batches = [int(b) for b in args.batches.split(",")]

    import relayrl_cupy

    gpu = relayrl_cupy.cuda_available()
    device_name = "none"
    if gpu:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        device_name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    print(f"host: {platform.processor() or platform.machine()}, numpy {np.__version__}, "
          f"CUDA device: {device_name}" + (f", cupy {cupy.__version__}" if gpu else ""))

    for model_name, (obs_dim, hidden, n_act) in MODELS.items():
        module = relayrl.mlp_policy(obs_dim, Discrete(n_act), hidden=hidden, seed=0)
        np_pol = module.policy()
        host_head = relayrl.make_head(module.metadata)
        if gpu:
            cu_module = relayrl_cupy.to_cupy(module)
            cu_pol = cu_module.policy("cuda")
            dev_head = relayrl_cupy.make_device_head(cu_module.metadata, "cuda")
        rows = []
        for batch in batches:
            obs = np.random.default_rng(1).standard_normal((batch, obs_dim)).astype(np.float32)
            rng = np.random.default_rng(0)
            np_rate, np_us = _rate(functools.partial(_forward_sample, host_head, np_pol, obs, rng), batch, min_time)
            row: list[object] = [batch, np_rate, np_us]
            if gpu:
                cu_host, cu_host_us = _rate(functools.partial(_forward_sample, host_head, cu_pol, obs, rng),
                                            batch, min_time)
                cu_dev, cu_dev_us = _rate(functools.partial(_forward_sample, dev_head, cu_pol, obs, rng),
                                          batch, min_time)
                row += [cu_host, cu_host_us, cu_dev, cu_dev_us, f"{cu_dev / np_rate:.2f}x"]
            else:
                row += ["n/a"] * 5
            rows.append(row)
        table(f"{model_name}: {obs_dim} -> {'x'.join(map(str, hidden))} tanh -> {n_act} actions + value; "
              "forward + sample, actions/s",
              ["batch", "numpy", "µs/call", "cupy+host head", "µs/call", "cupy+device head", "µs/call",
               "device head vs numpy"], rows)


if __name__ == "__main__":
    main()
