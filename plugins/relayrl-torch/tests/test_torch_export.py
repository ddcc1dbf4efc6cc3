"""export_policy: every format, the numpy MLP conversion, and its rejections."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from relayrl_torch import export_policy
from torch import nn

from relayrl import BackendUnavailableError, ConfigError, ModelError, ModelModule
from relayrl.spaces import Box, Discrete, MultiDiscrete

OBS = np.random.default_rng(5).standard_normal((16, 4)).astype(np.float32)


def run_torch(module: nn.Module, obs: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(obs)).numpy()  # type: ignore[no-any-return]


@pytest.mark.parametrize("activation", [nn.Tanh(), nn.ReLU(), nn.LeakyReLU(0.01), nn.ELU(1.0), nn.Sigmoid(),
                                        nn.SiLU(), nn.Identity()], ids=lambda m: type(m).__name__)
def test_numpy_format_computes_what_torch_computes(activation: nn.Module) -> None:
    torch.manual_seed(0)
    pi = nn.Sequential(nn.Linear(4, 16), activation, nn.Linear(16, 16), activation, nn.Linear(16, 3))
    module = export_policy(pi, obs_space=(4,), action_space=Discrete(3), format="numpy")
    assert module.backend == "numpy"
    np.testing.assert_allclose(module.policy().forward(OBS).logits, run_torch(pi, OBS), atol=1e-5)


def test_numpy_format_with_value_flatten_and_log_std() -> None:
    torch.manual_seed(0)
    pi = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    vf = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    module = export_policy(pi, obs_space=gym.spaces.Box(-1, 1, (2, 3)), action_space=gym.spaces.Box(-1, 1, (2,)),
                           format="numpy", value_module=vf, log_std=-0.5, version=7)
    obs = OBS[:, :3].reshape(8, 2, 3).copy()
    out = module.policy().forward(obs)
    np.testing.assert_allclose(out.mean, run_torch(pi, obs), atol=1e-5)
    np.testing.assert_allclose(out.value, run_torch(vf, obs)[:, 0], atol=1e-5)
    np.testing.assert_allclose(out.log_std, [-0.5, -0.5])
    assert module.version == 7 and module.obs_shape == (2, 3)


@pytest.mark.parametrize(("pi", "match"), [
    (nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 3)), "LeakyReLU"),
    (nn.Sequential(nn.Linear(4, 8), nn.ELU(0.5), nn.Linear(8, 3)), "ELU"),
    (nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)), "one activation"),
    (nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.ReLU(), nn.Linear(8, 3)), "several activations"),
    (nn.Sequential(nn.Linear(4, 3), nn.Tanh()), "end with a Linear"),
    (nn.Sequential(nn.Tanh(), nn.Linear(4, 3)), "start with a Linear"),
    (nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3)), "LayerNorm"),
    (nn.Sequential(nn.Flatten()), "no Linear"),
    (nn.GRU(4, 3), "nn.Sequential"),
], ids=["leaky-slope", "elu-alpha", "mixed", "stacked", "trailing", "leading", "layernorm", "empty", "gru"])
def test_numpy_format_rejects_what_the_numpy_mlp_cannot_run(pi: nn.Module, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        export_policy(pi, obs_space=(4,), action_space=Discrete(3), format="numpy")


def test_numpy_format_needs_one_activation_for_policy_and_value() -> None:
    pi = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    vf = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with pytest.raises(ModelError, match="same activation"):
        export_policy(pi, obs_space=(4,), action_space=Discrete(3), format="numpy", value_module=vf)


def test_log_std_comes_from_the_module_attribute() -> None:
    class Actor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mu = nn.Linear(4, 2)
            self.log_std = nn.Parameter(torch.tensor([0.25, -1.0]))

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            mean: torch.Tensor = self.mu(obs)
            return mean

    actor = Actor()
    module = export_policy(actor, obs_space=4, action_space=Box(-1.0, 1.0, (2,)), format="torchscript")
    out = module.policy().forward(OBS)
    np.testing.assert_allclose(out.log_std, [0.25, -1.0])
    np.testing.assert_allclose(out.mean, run_torch(actor, OBS), atol=1e-6)
    explicit = export_policy(actor, obs_space=4, action_space=Box(-1.0, 1.0, (2,)), format="torchscript",
                             log_std=np.array([0.0, 0.0]))
    np.testing.assert_allclose(explicit.policy().forward(OBS).log_std, [0.0, 0.0])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"format": "pickle"}, "unknown export format"),
    ({"action_space": Box(-1.0, 1.0, (2,))}, "log_std"),
    ({"action_space": Box(-1.0, 1.0, (3,)), "log_std": [0.0, 0.0]}, "3 dimensions"),
    ({"action_space": Box(-1.0, 1.0, (2, 2)), "log_std": 0.0}, "1-D"),
    ({"obs_space": gym.spaces.Discrete(4)}, "Box observation space"),
    ({"value_module": "critic"}, "torch.nn.Module"),
])
def test_bad_arguments_are_config_errors(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"obs_space": (4,), "action_space": Discrete(2), "format": "torchscript", **kwargs}
    with pytest.raises(ConfigError, match=match):
        export_policy(nn.Linear(4, 2), **args)


def test_the_callers_module_is_not_modified() -> None:
    pi = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).train()
    before = {k: v.clone() for k, v in pi.state_dict().items()}
    export_policy(pi, obs_space=(4,), action_space=Discrete(3), format="torchscript")
    assert pi.training
    for k, v in pi.state_dict().items():
        assert torch.equal(v, before[k])
        assert v.device.type == "cpu"


class NotScriptable(nn.Module):
    """Uses numpy inside forward: torch.jit.script fails, torch.jit.trace works."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lin(obs) * float(np.float32(2.0))
        return out


def test_torchscript_falls_back_to_tracing() -> None:
    torch.manual_seed(0)
    mod = NotScriptable()
    module = export_policy(mod, obs_space=(4,), action_space=Discrete(3), format="torchscript")
    for n in (1, 16):
        np.testing.assert_allclose(module.policy().forward(OBS[:n]).logits, run_torch(mod, OBS[:n]), atol=1e-6)


def test_multidiscrete_export_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pi = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 5))
    module = export_policy(pi, obs_space=(4,), action_space=MultiDiscrete((2, 3)), format="torchscript", version=3)
    assert module.metadata.extra["torch_format"] == "torchscript"
    assert module.metadata.model_file == "policy.pt"
    loaded = ModelModule.load(module.save(tmp_path / "m"))
    assert loaded == module and loaded.version == 3
    np.testing.assert_allclose(loaded.policy().forward(OBS).logits, run_torch(pi, OBS), atol=1e-6)


def test_onnx_export_without_onnxscript_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    with pytest.raises(BackendUnavailableError, match=r"relayrl-torch\[onnx\]"):
        export_policy(nn.Linear(4, 2), obs_space=(4,), action_space=Discrete(2), format="onnx")


def test_a_module_that_does_not_fit_the_spaces_is_rejected() -> None:
    with pytest.raises(ModelError):
        export_policy(nn.Linear(4, 5), obs_space=(4,), action_space=Discrete(3), format="torchscript")
    with pytest.raises(ModelError):
        export_policy(nn.Linear(6, 3), obs_space=(4,), action_space=Discrete(3), format="export")
