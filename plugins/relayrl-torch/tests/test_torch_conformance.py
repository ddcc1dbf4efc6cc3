"""The relayrl backend conformance kit, once per torch format (TorchScript, torch.export, RelayRL 0.4)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from relayrl_torch import export_policy
from torch import nn

from relayrl import ModelModule
from relayrl.testing import BackendConformance, ReferenceCase

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU,
                "sigmoid": nn.Sigmoid, "silu": nn.SiLU, "identity": nn.Identity}
# Exports (torch.export takes seconds) are cached per format and case: the kit asks for each many times.
_CACHE: dict[tuple[str, str], ModelModule] = {}


def torch_mlp(layers: Any, activation: str, flatten: bool) -> nn.Sequential:
    """An nn.Sequential computing the reference MLP given as (weight [out, in], bias [out]) pairs."""
    mods: list[nn.Module] = [nn.Flatten()] if flatten else []
    for i, (w, b) in enumerate(layers):
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.asarray(w, dtype=np.float32)))
            lin.bias.copy_(torch.from_numpy(np.asarray(b, dtype=np.float32)))
        mods.append(lin)
        if i != len(layers) - 1:
            mods.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*mods)


def export_case(case: ReferenceCase, fmt: Literal["torchscript", "export"]) -> ModelModule:
    key = (fmt, case.name)
    if key not in _CACHE:
        flatten = len(case.obs_shape) > 1
        pi = torch_mlp(case.pi_layers, case.activation, flatten)
        vf = torch_mlp(case.value_layers, case.activation, flatten) if case.value_layers is not None else None
        _CACHE[key] = export_policy(pi, obs_space=case.obs_shape, action_space=case.action_space, format=fmt,
                                    value_module=vf, log_std=case.log_std)
    return _CACHE[key]


class TestTorchScriptConformance(BackendConformance):
    backend = "torch"

    def convert(self, case: ReferenceCase) -> ModelModule:
        return export_case(case, "torchscript")


class TestTorchExportConformance(BackendConformance):
    backend = "torch"

    def convert(self, case: ReferenceCase) -> ModelModule:
        return export_case(case, "export")


class _Distribution(nn.Module):
    """RelayRL 0.4's DiscretePolicyNetwork: _distribution(obs, mask) -> (probs, masked logits)."""

    def __init__(self, pi_network: nn.Module) -> None:
        super().__init__()
        self.pi_network = pi_network

    @torch.jit.export
    def _distribution(self, obs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.squeeze(self.pi_network(obs), -1) + (mask - 1) * 1e8
        return torch.softmax(logits, -1), logits

    def forward(self, obs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._distribution(obs, mask)


class _Legacy(nn.Module):
    """RelayRL 0.4's PolicyWithoutBaseline: step() samples inside the model; no forward()."""

    def __init__(self, policy: _Distribution, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.policy = policy
        self.input_dim = in_dim
        self.output_dim = out_dim

    @torch.jit.export
    def step(self, obs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        probs, logits = self.policy._distribution(obs, mask)
        act = torch.multinomial(probs, 1)
        return act, {"logp_a": torch.log_softmax(logits, -1).gather(-1, act).squeeze(-1)}

    @torch.jit.export
    def get_input_dim(self) -> int:
        return self.input_dim

    @torch.jit.export
    def get_output_dim(self) -> int:
        return self.output_dim


def legacy_module(case: ReferenceCase) -> ModelModule:
    """A RelayRL 0.4-style TorchScript policy, with metadata as relayrl reads RelayRL's metadata.json."""
    import io

    pi = torch_mlp(case.pi_layers, case.activation, len(case.obs_shape) > 1)
    scripted = torch.jit.script(_Legacy(_Distribution(pi), int(np.prod(case.obs_shape)), case.action_space.flat_dim))
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    return ModelModule.create(backend="torch", model_file="client_model.pt", data=buf.getvalue(),
                              obs_shape=case.obs_shape, action_space=case.action_space)


class TestRelayRL04Conformance(BackendConformance):
    """0.4 policies have no value output and a categorical head: the case that fits."""

    backend = "torch"
    cases: ClassVar[tuple[str, ...]] = ("discrete-relu-novalue",)

    def convert(self, case: ReferenceCase) -> ModelModule:
        return legacy_module(case)


def standalone_network_module(case: ReferenceCase) -> ModelModule:
    """A RelayRL 0.4 policy network scripted by itself: forward(obs, mask) returns (probs, logits)."""
    import io

    pi = torch_mlp(case.pi_layers, case.activation, len(case.obs_shape) > 1)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(_Distribution(pi)), buf)
    return ModelModule.create(backend="torch", model_file="policy_network.pt", data=buf.getvalue(),
                              obs_shape=case.obs_shape, action_space=case.action_space)


class TestRelayRL04NetworkConformance(BackendConformance):
    """The same network saved without its step() wrapper: served through its own _distribution()."""

    backend = "torch"
    cases: ClassVar[tuple[str, ...]] = ("discrete-relu-novalue",)

    def convert(self, case: ReferenceCase) -> ModelModule:
        module = standalone_network_module(case)
        assert module.policy().entry == "_distribution"
        return module
