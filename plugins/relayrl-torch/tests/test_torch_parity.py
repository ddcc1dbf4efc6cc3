"""Parity: one set of torch weights exported to numpy, TorchScript, torch.export and ONNX acts identically.

Deterministic actions must be equal and log-probabilities within 1e-5, through the framework's
heads and through ``relayrl.open_agent`` / ``request_action``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from relayrl_torch import export_policy
from torch import nn

import relayrl
from relayrl import ModelModule, make_head
from relayrl.backends import available
from relayrl.spaces import Box, Discrete, MultiDiscrete, Space

FORMATS = ["numpy", "torchscript", "export", "onnx"]
SPACES: dict[str, Space] = {"discrete": Discrete(4), "multidiscrete": MultiDiscrete((3, 2)),
                            "gaussian": Box(-1.0, 1.0, (2,))}
N = 32


def _nets(space: Space, seed: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    pi = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, space.flat_dim))
    vf = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 1))
    with torch.no_grad():  # spread-out logits, so that parity means something
        last = pi[-1]
        assert isinstance(last, nn.Linear)
        last.weight.mul_(3.0)
    return pi, vf


@pytest.fixture(scope="module")
def modules() -> dict[tuple[str, str], ModelModule]:
    out = {}
    for kind, space in SPACES.items():
        pi, vf = _nets(space, seed=len(kind))
        log_std = np.array([-0.4, 0.3], dtype=np.float32) if kind == "gaussian" else None
        for fmt in FORMATS:
            if fmt == "onnx" and "onnx" not in available():
                continue
            out[kind, fmt] = export_policy(pi, obs_space=(5,), action_space=space, format=fmt,  # type: ignore[arg-type]
                                           value_module=vf, log_std=log_std, version=1)
    return out


def _module(modules: dict[tuple[str, str], ModelModule], kind: str, fmt: str) -> ModelModule:
    if (kind, fmt) not in modules:
        pytest.skip("the onnx backend (relayrl-onnx) is not installed")
    return modules[kind, fmt]


def _obs(seed: int = 11) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal((N, 5)).astype(np.float32)


@pytest.mark.parametrize("fmt", FORMATS[1:])
@pytest.mark.parametrize("kind", list(SPACES))
def test_heads_give_the_same_actions_and_log_probs(modules: dict[tuple[str, str], ModelModule], kind: str,
                                                  fmt: str) -> None:
    ref, other = modules[kind, "numpy"], _module(modules, kind, fmt)
    obs = _obs()
    ref_out, out = ref.policy().forward(obs), other.policy().forward(obs)
    np.testing.assert_allclose(out.value, ref_out.value, atol=1e-5)
    head, ref_head = make_head(other.metadata), make_head(ref.metadata)
    a1, lp1 = head.sample(out, np.random.default_rng(0), deterministic=True)
    a2, lp2 = ref_head.sample(ref_out, np.random.default_rng(0), deterministic=True)
    if kind == "gaussian":
        np.testing.assert_allclose(a1, a2, atol=1e-5)
    else:
        np.testing.assert_array_equal(a1, a2)
    np.testing.assert_allclose(lp1, lp2, atol=1e-5)
    # seeded sampling gives the same actions too, and log_prob agrees on them
    s1, slp1 = head.sample(out, np.random.default_rng(3))
    s2, slp2 = ref_head.sample(ref_out, np.random.default_rng(3))
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    np.testing.assert_allclose(slp1, slp2, atol=1e-5)
    np.testing.assert_allclose(head.log_prob(out, a2), lp2, atol=1e-5)


@pytest.mark.parametrize("kind", list(SPACES))
async def test_the_agent_gives_the_same_actions_on_every_backend(modules: dict[tuple[str, str], ModelModule],
                                                                 kind: str) -> None:
    obs = _obs(12)
    results = {}
    for fmt in FORMATS:
        if (kind, fmt) not in modules:
            continue
        async with relayrl.open_agent(modules[kind, fmt], actors=N, seed=0) as agent:
            det = await agent.request_action(agent.actor_ids, obs, deterministic=True)
            single = await agent.request_action(agent.actor_ids[:1], obs[:1], deterministic=True)
            results[fmt] = (np.asarray(det.act), np.asarray(det.logp), np.asarray(det.value),
                            np.asarray(single.act), np.asarray(det.model_version))
    assert len(results) >= 3
    act, logp, value, single_act, versions = results["numpy"]
    assert np.all(versions == 1)
    for fmt, (a, lp, v, s, ver) in results.items():
        if kind == "gaussian":
            np.testing.assert_allclose(a, act, atol=1e-5, err_msg=fmt)
        else:
            np.testing.assert_array_equal(a, act, err_msg=fmt)
            np.testing.assert_array_equal(s, single_act, err_msg=fmt)
        np.testing.assert_allclose(lp, logp, atol=1e-5, err_msg=fmt)
        np.testing.assert_allclose(v, value, atol=1e-5, err_msg=fmt)
        np.testing.assert_array_equal(ver, versions)
