"""Inference backends side by side: the bare library call next to relayrl's ``request_action``.

For one set of weights (a CartPole-sized MLP: 4 inputs, 64x64 tanh, 2 actions, value head)
exported with ``relayrl_torch.export_policy`` to every format, this measures in one run:

* single-observation latency (median and p99, µs per call, ``perf_counter_ns`` around each
  call) of the bare library call, of ``policy.forward`` + head sampling (the least a framework
  must do), and of ``agent.request_action`` for one actor (the step is recorded);
* batch-256 throughput (actions/s) of the same three, ``request_action`` for 256 actors.

Bare library calls: numpy = the MLP as numpy matmuls (what the numpy backend computes);
torch = the loaded TorchScript module / ``ExportedProgram.module()`` called under
``torch.inference_mode`` on ``torch.from_numpy`` input, outputs converted with ``.numpy()``;
onnx = ``InferenceSession.run`` on the same session relayrl uses.

Run: ``.venv/bin/python benchmarks/backends_latency.py [--quick]`` (torch and onnxruntime use
1 thread; needs relayrl-torch[onnx] and relayrl-onnx installed).
"""

from __future__ import annotations

import argparse
import io
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import _common  # noqa: F401  (sets thread limits first)
import attrs
import numpy as np
import torch
import trio
from _common import median, percentile, table
from relayrl_torch import export_policy, set_num_threads
from torch import nn

import relayrl

Array = np.ndarray[Any, Any]
FORMATS = ("numpy", "torchscript", "export", "onnx")
LABELS = {"numpy": "numpy", "torchscript": "torch (TorchScript)", "export": "torch (torch.export)", "onnx": "onnx"}


def _nets() -> tuple[nn.Sequential, nn.Sequential]:
    torch.manual_seed(0)
    pi = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))
    vf = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    return pi, vf


def bare_call(model: relayrl.ModelModule, fmt: str, pi: nn.Sequential, vf: nn.Sequential) -> Callable[[Array], Any]:
    """The library call that computes the head parameters and the value, nothing else."""
    if fmt == "numpy":
        layers = [[(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
                   for m in net if isinstance(m, nn.Linear)] for net in (pi, vf)]

        def numpy_forward(obs: Array) -> Any:
            outs = []
            for net in layers:
                x = obs
                for i, (w, b) in enumerate(net):
                    x = x @ w + b
                    if i < len(net) - 1:
                        x = np.tanh(x)
                outs.append(x)
            return outs

        return numpy_forward
    if fmt == "onnx":
        session = model.policy().session  # the very session relayrl runs
        return lambda obs: session.run(None, {"obs": obs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            fn = torch.jit.load(io.BytesIO(model.data))  # type: ignore[no-untyped-call]
        else:
            fn = torch.export.load(io.BytesIO(model.data)).module()

    def torch_forward(obs: Array) -> Any:
        with torch.inference_mode():
            return [t.numpy() for t in fn(torch.from_numpy(obs))]

    return torch_forward


def framework_call(model: relayrl.ModelModule) -> Callable[[Array], Any]:
    """``policy.forward`` + head sampling: what relayrl must do at least per request."""
    policy = model.policy()
    head = relayrl.make_head(model.metadata)
    rng = np.random.default_rng(0)
    return lambda obs: head.sample(policy.forward(obs), rng)


def latencies(fn: Callable[[Array], Any], obs: Array, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t = time.perf_counter_ns()
        fn(obs)
        out.append((time.perf_counter_ns() - t) / 1000)
    return out


def throughput(fn: Callable[[Array], Any], obs: Array, iters: int) -> float:
    t = time.perf_counter()
    for _ in range(iters):
        fn(obs)
    return float(obs.shape[0] * iters / (time.perf_counter() - t))


async def alatencies(fn: Callable[[Array], Awaitable[Any]], obs: Array, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t = time.perf_counter_ns()
        await fn(obs)
        out.append((time.perf_counter_ns() - t) / 1000)
    return out


async def athroughput(fn: Callable[[Array], Awaitable[Any]], obs: Array, iters: int) -> float:
    t = time.perf_counter()
    for _ in range(iters):
        await fn(obs)
    return float(obs.shape[0] * iters / (time.perf_counter() - t))


@attrs.define
class Result:
    """Per measured call: the round with the lowest median latency, and the best throughput."""

    lat: list[float] = attrs.Factory(list)
    rate: float = 0.0

    def add(self, lat: list[float], rate: float) -> None:
        if not self.lat or median(lat) < median(self.lat):
            self.lat = lat
        self.rate = max(self.rate, rate)

    def latency(self) -> str:
        return f"{median(self.lat):.1f} / {percentile(self.lat, 99):.1f}"


async def measure(model: relayrl.ModelModule, bare: Callable[[Array], Any], obs1: Array, obs256: Array,
                  iters: int, batch_iters: int, rounds: int) -> tuple[Result, Result, Result]:
    """Interleaved rounds of bare call, forward+sample and request_action (fair on a busy machine)."""
    frame = framework_call(model)
    results = Result(), Result(), Result()
    async with relayrl.open_agent(model, actors=256, seed=0, max_traj_length=100_000) as agent:
        ids = agent.actor_ids
        one = ids[:1]

        async def single(obs: Array) -> Any:
            return await agent.request_action(one, obs)

        async def batch(obs: Array) -> Any:
            return await agent.request_action(ids, obs)

        for fn in (bare, frame):  # warm-up
            throughput(fn, obs1, 200)
            throughput(fn, obs256, 5)
        await athroughput(single, obs1, 200)
        await athroughput(batch, obs256, 5)
        for _ in range(rounds):
            for res, fn in zip(results[:2], (bare, frame)):
                res.add(latencies(fn, obs1, iters), throughput(fn, obs256, batch_iters))
            results[2].add(await alatencies(single, obs1, iters), await athroughput(batch, obs256, batch_iters))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset of " + ",".join(FORMATS))
    args = parser.parse_args()
    iters, batch_iters, rounds = (300, 20, 2) if args.quick else (2000, 100, 5)
    set_num_threads(1)
    torch.set_num_threads(1)
    pi, vf = _nets()
    rng = np.random.default_rng(1)
    obs1 = rng.standard_normal((1, 4)).astype(np.float32)
    obs256 = rng.standard_normal((256, 4)).astype(np.float32)
    rows = []
    for fmt in args.formats.split(","):
        model = export_policy(pi, obs_space=(4,), action_space=relayrl.spaces.Discrete(2), format=fmt,
                              value_module=vf)
        bare, frame, agent = trio.run(measure, model, bare_call(model, fmt, pi, vf), obs1, obs256, iters,
                                      batch_iters, rounds)
        rows.append([LABELS[fmt], bare.latency(), frame.latency(), agent.latency(),
                     f"{median(agent.lat) / median(bare.lat):.2f}x / {median(agent.lat) / median(frame.lat):.2f}x",
                     bare.rate, frame.rate, agent.rate])
    table("Inference backends: bare library call vs forward+sample vs request_action "
          f"(MLP 4-64-64-2 + value head, 1 thread; best of {rounds} interleaved rounds of {iters} single calls "
          f"and {batch_iters} batches of 256)",
          ["backend", "1 obs bare µs med/p99", "1 obs forward+sample µs", "1 obs request_action µs",
           "request_action / bare / fwd+sample", "b256 bare actions/s", "b256 forward+sample actions/s",
           "b256 request_action actions/s"], rows)


if __name__ == "__main__":
    main()
