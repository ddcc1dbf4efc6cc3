"""A trained algorithm's policy as one self-contained torch module, and its torch/ONNX export."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from relayrl import ModelModule

if TYPE_CHECKING:
    from ._base import ActorCriticAlgorithm

__all__ = ["PolicyModule", "export_with_relayrl_torch"]


class _Normalise(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Any, std: Any, clip: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.clip = clip

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.reshape(obs.shape[0], -1).float()
        return ((x - self.mean) / self.std).clamp(-self.clip, self.clip)


class _Scaled(nn.Module):
    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        self.net = net
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out.reshape(-1) * self.scale


class PolicyModule(nn.Module):
    """What the exported model computes, as torch modules (for parity checks and torch/ONNX export).

    ``policy(obs)`` gives the logits (or the Gaussian mean) and ``value(obs)`` the value in
    environment reward units (None when the export has no value output); both apply the
    observation normalisation first. ``log_std`` is the Gaussian log standard deviation.
    """

    def __init__(self, algo: ActorCriticAlgorithm) -> None:
        super().__init__()
        rms = algo.obs_rms
        mean = np.zeros(algo._obs_dim) if rms is None else rms.mean
        std = np.ones(algo._obs_dim) if rms is None else rms.std()
        clip = float(algo.config.obs_clip) if rms is not None else float("inf")
        self.policy = nn.Sequential(_Normalise(mean, std, clip), copy.deepcopy(algo.pi).cpu())
        self.value: nn.Module | None = None
        if algo.vf is not None and algo._export_value():
            self.value = nn.Sequential(_Normalise(mean, std, clip),
                                       _Scaled(copy.deepcopy(algo.vf).cpu(), float(algo._value_scale())))
        self.log_std = None if algo.log_std is None else algo.log_std.detach().cpu().clone()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.policy(obs), None if self.value is None else self.value(obs)


def export_with_relayrl_torch(algo: ActorCriticAlgorithm, fmt: str, version: int, extra: dict[str, Any]) -> ModelModule:
    """Export through :func:`relayrl_torch.export_policy` (TorchScript for ``"torch"``, ONNX for ``"onnx"``)."""
    from .._export import export_policy

    module = PolicyModule(algo)
    out = export_policy(
        module.policy, obs_space=algo.obs_space.shape, action_space=algo.action_space,
        format="torchscript" if fmt == "torch" else "onnx", value_module=module.value, log_std=module.log_std,
        version=version,
    )
    return out.with_extra(**extra)
