"""A backend can supply its own (device) head; the agent uses it instead of the host heads."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import relayrl
from relayrl import CategoricalHead, ModelMetadata
from relayrl._backends import registry
from relayrl._numpy_backend import NumpyBackend
from relayrl.spaces import Discrete


class CountingHead(CategoricalHead):
    calls = 0

    def sample(self, out: Any, rng: np.random.Generator, mask: Any = None, deterministic: bool = False) -> Any:
        CountingHead.calls += 1
        return super().sample(out, rng, mask, deterministic)


class HeadBackend(NumpyBackend):
    def make_head(self, metadata: ModelMetadata, device: str = "cpu") -> CountingHead:
        assert isinstance(metadata.action_space, Discrete)
        return CountingHead(metadata.action_space)


async def test_agent_samples_with_the_backend_head(monkeypatch: pytest.MonkeyPatch) -> None:
    registry.get("numpy")
    monkeypatch.setitem(registry._loaded, "numpy", HeadBackend())
    CountingHead.calls = 0
    model = relayrl.mlp_policy(4, Discrete(3), seed=1)
    async with relayrl.open_agent(model, actors=3, seed=0) as agent:
        batch = await agent.request_action(agent.actor_ids, np.zeros((3, 4), np.float32))
    assert CountingHead.calls == 1
    assert batch.act.shape == (3,)


def test_default_backend_has_no_head_of_its_own() -> None:
    model = relayrl.mlp_policy(4, Discrete(3))
    assert relayrl.backends.get("numpy").make_head(model.metadata) is None
