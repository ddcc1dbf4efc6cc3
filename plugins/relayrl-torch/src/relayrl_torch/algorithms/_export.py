"""A trained algorithm's policy as one self-contained torch module, and its torch/ONNX export."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from relayrl import BackendUnavailableError, ModelModule

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


def onnx_mlp(
    algo: ActorCriticAlgorithm,
    pi_layers: list[tuple[Any, Any]],
    value_layers: list[tuple[Any, Any]] | None,
    norm: dict[str, Any],
    log_std: Any,
    version: int,
    extra: dict[str, Any],
) -> ModelModule:
    """Write the MLP straight into an ONNX graph (Flatten, normalisation, Gemm + activation per layer).

    Milliseconds instead of the seconds a traced export takes, so a model can be published after
    every update. Input ``obs`` (dynamic batch); outputs ``logits`` or ``mean`` + ``log_std``, then
    ``value`` -- the interface the ``onnx`` backend reads.
    """
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        raise BackendUnavailableError("export_backend='onnx' needs the onnx package: "
                                      "pip install -c constraints.txt 'relayrl-torch[onnx]' relayrl-onnx") from exc

    act = algo.config.activation
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, value: Any) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def activation(x: str, out: str) -> str:
        if act == "tanh":
            nodes.append(helper.make_node("Tanh", [x], [out]))
        elif act == "relu":
            nodes.append(helper.make_node("Relu", [x], [out]))
        elif act == "leaky_relu":
            nodes.append(helper.make_node("LeakyRelu", [x], [out], alpha=0.01))
        elif act == "elu":
            nodes.append(helper.make_node("Elu", [x], [out], alpha=1.0))
        elif act == "sigmoid":
            nodes.append(helper.make_node("Sigmoid", [x], [out]))
        elif act == "silu":
            nodes.append(helper.make_node("Sigmoid", [x], [out + "_sig"]))
            nodes.append(helper.make_node("Mul", [x, out + "_sig"], [out]))
        else:
            nodes.append(helper.make_node("Identity", [x], [out]))
        return out

    def mlp_nodes(prefix: str, x: str, layers: list[tuple[Any, Any]], out: str) -> None:
        for i, (w, b) in enumerate(layers):
            last = i == len(layers) - 1
            y = out if last else f"{prefix}{i}_lin"
            nodes.append(helper.make_node("Gemm", [x, const(f"{prefix}{i}.weight", w), const(f"{prefix}{i}.bias", b)],
                                          [y], transB=1))
            x = y if last else activation(y, f"{prefix}{i}_act")

    nodes.append(helper.make_node("Flatten", ["obs"], ["x_flat"], axis=1))
    x = "x_flat"
    if norm:
        clip = float(norm["obs_clip"])
        nodes.append(helper.make_node("Sub", [x, const("obs_mean", norm["obs_mean"])], ["x_centred"]))
        nodes.append(helper.make_node("Div", ["x_centred", const("obs_std", norm["obs_std"])], ["x_scaled"]))
        bounds = [const("clip_lo", -clip), const("clip_hi", clip)]
        nodes.append(helper.make_node("Clip", ["x_scaled", *bounds], ["x_norm"]))
        x = "x_norm"
    gaussian = log_std is not None
    out_dim = int(np.asarray(pi_layers[-1][0]).shape[0])
    mlp_nodes("pi", x, pi_layers, "mean" if gaussian else "logits")
    outputs = [helper.make_tensor_value_info("mean" if gaussian else "logits", TensorProto.FLOAT, ["batch", out_dim])]
    if gaussian:
        std_param = const("log_std_param", np.asarray(log_std).reshape(-1))
        nodes.append(helper.make_node("Identity", [std_param], ["log_std"]))
        outputs.append(helper.make_tensor_value_info("log_std", TensorProto.FLOAT, [out_dim]))
    if value_layers:
        mlp_nodes("vf", x, value_layers, "value_2d")
        inits.append(numpy_helper.from_array(np.asarray([-1], dtype=np.int64), "flat_shape"))
        nodes.append(helper.make_node("Reshape", ["value_2d", "flat_shape"], ["value"]))
        outputs.append(helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch"]))
    obs_in = helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", *algo.obs_space.shape])
    graph = helper.make_graph(nodes, f"relayrl_{algo.name}_policy", [obs_in], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="relayrl-torch")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return ModelModule.create(
        backend="onnx", model_file="policy.onnx", data=model.SerializeToString(), obs_shape=algo.obs_space.shape,
        action_space=algo.action_space, value_output=bool(value_layers), version=version,
        extra={**extra, "exported_by": "relayrl_torch.algorithms"},
    )


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
