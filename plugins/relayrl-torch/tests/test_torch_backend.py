"""The torch backend: entry-method selection, format detection, outputs, devices, threads, RelayRL 0.4 models."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
import torch
from relayrl_torch import TorchBackend, detect_format, export_policy, get_num_threads, set_num_threads
from relayrl_torch import _threads as threads_module
from torch import nn

import relayrl
from relayrl import BackendUnavailableError, ConfigError, ModelError, ModelModule, make_head
from relayrl.spaces import Box, Discrete

EXAMPLE = Path("/work/shared/compat/relayrl-example-model")
needs_example = pytest.mark.skipif(not EXAMPLE.is_dir(), reason="the RelayRL example model is not on this machine")


def scripted(module: nn.Module, *, action_space: Any = None, obs_shape: tuple[int, ...] = (4,),
             value: bool = False, validate: bool = True, model_file: str = "model.pt") -> ModelModule:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf)
    return ModelModule.create(backend="torch", model_file=model_file, data=buf.getvalue(), obs_shape=obs_shape,
                              action_space=action_space or Discrete(3), value_output=value, validate=validate)


def obs_batch(n: int = 6, dim: int = 4, seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    yield
    set_num_threads(1)


# -- the original project's example model ------------------------------------------------------------


@needs_example
def test_example_model_serves_logits_of_its_policy_network() -> None:
    module = ModelModule.load(EXAMPLE)
    policy = module.policy()
    assert policy.entry == "policy._distribution"
    assert policy.format == "torchscript"
    obs = obs_batch(5)
    with torch.inference_mode():
        raw = torch.jit.load(str(EXAMPLE / "client_model.pt"))  # type: ignore[no-untyped-call]
        expected = raw.policy.pi_network(torch.from_numpy(obs)).numpy()
    out = policy.forward(obs)
    np.testing.assert_allclose(out.logits, expected, atol=1e-6)
    act, logp = make_head(module.metadata).sample(out, np.random.default_rng(0), deterministic=True)
    np.testing.assert_array_equal(act, expected.argmax(axis=1))
    log_softmax = expected - np.log(np.exp(expected).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(logp, log_softmax[np.arange(5), act], atol=1e-5)


@needs_example
async def test_example_model_serves_actions_through_the_agent() -> None:
    module = ModelModule.load(EXAMPLE)
    obs = obs_batch(3)
    logits = module.policy().forward(obs).logits
    assert logits is not None
    async with relayrl.open_agent(module, actors=3, seed=0) as agent:
        batch = await agent.request_action(agent.actor_ids, obs, deterministic=True)
        np.testing.assert_array_equal(batch.act, logits.argmax(axis=1))
        log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        np.testing.assert_allclose(batch.logp, log_softmax[np.arange(3), batch.act], atol=1e-5)
        sampled = await agent.request_action(agent.actor_ids, obs)
        assert set(np.asarray(sampled.act).tolist()) <= {0, 1}
        assert np.all(np.isfinite(sampled.logp))


# -- entry-method selection ----------------------------------------------------------------------------


class LogitsAndForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    @torch.jit.export
    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lin(obs)
        return out

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(obs.shape[0], 3)


def test_a_logits_method_is_preferred_to_forward() -> None:
    torch.manual_seed(0)
    mod = LogitsAndForward()
    policy = scripted(mod).policy()
    assert policy.entry == "logits"
    obs = obs_batch()
    with torch.no_grad():
        np.testing.assert_allclose(policy.forward(obs).logits, mod.lin(torch.from_numpy(obs)).numpy(), atol=1e-6)


class ForwardWithMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lin(obs) + (mask - 1.0) * 1e8
        return out


def test_forward_with_a_mask_argument_gets_an_all_ones_mask() -> None:
    torch.manual_seed(0)
    mod = ForwardWithMask()
    policy = scripted(mod).policy()
    assert policy.entry == "forward"
    obs = obs_batch()
    with torch.no_grad():
        np.testing.assert_allclose(policy.forward(obs).logits, mod.lin(torch.from_numpy(obs)).numpy(), atol=1e-6)


class PiNetworkOnly(nn.Module):
    """A 0.4-style script whose logits come only from its pi_network (no _distribution)."""

    def __init__(self) -> None:
        super().__init__()
        self.pi_network = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    @torch.jit.export
    def step(self, obs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        act = torch.multinomial(torch.softmax(self.pi_network(obs), -1), 1)
        return act, {"logp_a": torch.zeros(obs.shape[0])}


def test_a_pi_network_submodule_is_the_last_fallback() -> None:
    torch.manual_seed(0)
    mod = PiNetworkOnly()
    policy = scripted(mod).policy()
    assert policy.entry == "pi_network"
    obs = obs_batch()
    with torch.no_grad():
        np.testing.assert_allclose(policy.forward(obs).logits, mod.pi_network(torch.from_numpy(obs)).numpy(),
                                   atol=1e-6)


class StepOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    @torch.jit.export
    def step(self, obs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        act = torch.multinomial(torch.softmax(self.lin(obs), -1), 1)
        return act, {"logp_a": torch.zeros(obs.shape[0])}


def test_a_model_that_only_samples_inside_step_is_rejected() -> None:
    module = scripted(StepOnly(), validate=False)
    with pytest.raises(ModelError, match=r"cannot obtain logits.*step\(\)"):
        module.validate()
    with pytest.raises(ModelError):
        module.policy()  # nothing was cached by the failed attempt


class DictOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pi = nn.Linear(4, 2)
        self.vf = nn.Linear(4, 1)
        self.log_std = nn.Parameter(torch.tensor([-0.3, 0.2]))

    def forward(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mean": self.pi(obs), "log_std": self.log_std, "value": self.vf(obs)}


def test_dict_outputs_and_a_column_value_are_read() -> None:
    torch.manual_seed(0)
    mod = DictOutputs()
    policy = scripted(mod, action_space=Box(-1.0, 1.0, (2,)), value=True).policy()
    obs = obs_batch()
    out = policy.forward(obs)
    with torch.no_grad():
        x = torch.from_numpy(obs)
        np.testing.assert_allclose(out.mean, mod.pi(x).numpy(), atol=1e-6)
        np.testing.assert_allclose(out.value, mod.vf(x)[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(out.log_std, [-0.3, 0.2], atol=1e-7)
    assert out.value is not None and out.value.shape == (6,)
    assert out.mean is not None and out.mean.dtype == np.float32


class MeanOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pi = nn.Linear(4, 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.pi(obs)
        return out


def test_a_gaussian_model_without_log_std_is_rejected() -> None:
    with pytest.raises(ModelError, match="log_std"):
        scripted(MeanOnly(), action_space=Box(-1.0, 1.0, (2,)))


def test_a_declared_value_output_that_the_model_lacks_is_rejected() -> None:
    with pytest.raises(ModelError, match="value"):
        scripted(PiNetworkOnly(), value=True)


def test_observations_of_another_dtype_layout_or_read_only_are_accepted() -> None:
    torch.manual_seed(0)
    policy = scripted(LogitsAndForward()).policy()
    obs = obs_batch()
    expected = policy.forward(obs).logits
    frozen = obs.copy()
    frozen.flags.writeable = False
    np.testing.assert_array_equal(policy.forward(frozen).logits, expected)
    np.testing.assert_allclose(policy.forward(obs.astype(np.float64)).logits, expected, atol=1e-6)
    np.testing.assert_allclose(policy.forward(obs[::-1]).logits, expected[::-1], atol=1e-6)
    np.testing.assert_allclose(policy.forward(np.asfortranarray(obs)).logits, expected, atol=1e-6)


# -- format detection ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported() -> dict[str, ModelModule]:
    torch.manual_seed(1)
    pi = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    return {fmt: export_policy(pi, obs_space=(4,), action_space=Discrete(3), format=fmt)
            for fmt in ("torchscript", "export")}


def _without_format(module: ModelModule, model_file: str | None = None, **extra: Any) -> ModelModule:
    # A new module (with_extra would share the loaded-policy cache).
    meta = attrs.evolve(module.metadata, extra=extra, model_file=model_file or module.metadata.model_file)
    return ModelModule(meta, module.data)


@pytest.mark.parametrize(("fmt", "name"), [("torchscript", "policy.pt"), ("export", "policy.pt2"),
                                           ("export", "policy.bin"), ("torchscript", "policy.bin")])
def test_the_format_is_detected_when_the_metadata_does_not_say(exported: dict[str, ModelModule], fmt: str,
                                                                name: str) -> None:
    module = _without_format(exported[fmt], name)
    assert detect_format(module) == fmt
    obs = obs_batch()
    np.testing.assert_allclose(module.policy().forward(obs).logits, exported[fmt].policy().forward(obs).logits,
                               atol=1e-6)


def test_an_unknown_declared_format_is_rejected(exported: dict[str, ModelModule]) -> None:
    module = _without_format(exported["torchscript"], torch_format="pickle")
    with pytest.raises(ModelError, match="torch_format"):
        module.validate()


def test_a_zip_that_is_no_torch_archive_is_rejected() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"not a model")
    module = ModelModule.create(backend="torch", model_file="model.pt", data=buf.getvalue(), obs_shape=(4,),
                                action_space=Discrete(3), validate=False)
    with pytest.raises(ModelError, match="neither a TorchScript"):
        module.validate()
    garbage = ModelModule.create(backend="torch", model_file="model.pt", data=b"\x00" * 64, obs_shape=(4,),
                                 action_space=Discrete(3), validate=False)
    with pytest.raises(ModelError, match="not a zip"):
        garbage.validate()


def test_a_torchscript_file_mislabelled_as_export_is_rejected(exported: dict[str, ModelModule]) -> None:
    module = _without_format(exported["torchscript"], torch_format="export")
    with pytest.raises(ModelError, match="export"):
        module.validate()


# -- devices and threads -------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_a_cuda_device_is_unavailable(exported: dict[str, ModelModule]) -> None:
    with pytest.raises(BackendUnavailableError, match="cuda"):
        TorchBackend().load(exported["torchscript"], "cuda")
    assert TorchBackend().devices() == ["cpu"]


@pytest.mark.parametrize("device", ["mps", "tpu:0", "not a device"])
def test_other_devices_are_unavailable(exported: dict[str, ModelModule], device: str) -> None:
    with pytest.raises(BackendUnavailableError):
        TorchBackend().load(exported["torchscript"], device)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_cuda_gives_the_cpu_results(exported: dict[str, ModelModule], fmt: str) -> None:
    module = exported[fmt]
    obs = obs_batch(64)
    gpu = module.policy("cuda").forward(obs)
    assert isinstance(gpu.logits, np.ndarray) and gpu.logits.dtype == np.float32
    np.testing.assert_allclose(gpu.logits, module.policy().forward(obs).logits, atol=1e-5)
    assert "cuda" in TorchBackend().devices()


def test_thread_count_is_settable() -> None:
    set_num_threads(2)
    assert get_num_threads() == 2
    set_num_threads(1)
    assert get_num_threads() == 1


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_a_bad_thread_count_is_rejected(bad: Any) -> None:
    with pytest.raises(ConfigError):
        set_num_threads(bad)
    assert get_num_threads() == 1


def test_the_thread_env_var_applies_at_the_first_load(monkeypatch: pytest.MonkeyPatch,
                                                       exported: dict[str, ModelModule]) -> None:
    fresh = ModelModule(exported["torchscript"].metadata, exported["torchscript"].data)
    monkeypatch.setattr(threads_module, "_configured", False)
    monkeypatch.setenv("RELAYRL_TORCH_THREADS", "lots")
    with pytest.raises(ConfigError, match="RELAYRL_TORCH_THREADS"):
        fresh.validate()
    monkeypatch.setenv("RELAYRL_TORCH_THREADS", "2")
    fresh.validate()
    assert get_num_threads() == 2
