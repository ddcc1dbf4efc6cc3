"""The relayrl backend conformance kit for the onnx backend (hand-built graphs and torch exports)."""

from __future__ import annotations

import importlib.util

import pytest
from _onnx_graphs import mlp_onnx

from relayrl import ModelModule
from relayrl.testing import BackendConformance, ReferenceCase

_CACHE: dict[str, ModelModule] = {}


class TestOnnxConformance(BackendConformance):
    """Models written with onnx.helper: Gemm layers, the reference activation, outputs by name."""

    backend = "onnx"

    def convert(self, case: ReferenceCase) -> ModelModule:
        data = mlp_onnx(case.obs_shape, case.pi_layers, value_layers=case.value_layers, activation=case.activation,
                        log_std=case.log_std)
        return ModelModule.create(backend="onnx", model_file="policy.onnx", data=data, obs_shape=case.obs_shape,
                                  action_space=case.action_space, value_output=case.value_layers is not None)


@pytest.mark.skipif(importlib.util.find_spec("relayrl_torch") is None or importlib.util.find_spec("onnxscript") is None,
                    reason="needs relayrl-torch[onnx] to export from torch")
class TestTorchExportedOnnxConformance(BackendConformance):
    """Models written by relayrl_torch.export_policy(format="onnx") (the dynamo exporter)."""

    backend = "onnx"

    def convert(self, case: ReferenceCase) -> ModelModule:
        if case.name not in _CACHE:  # exporting takes seconds; the kit asks for each case many times
            import torch
            from relayrl_torch import export_policy
            from torch import nn

            def mlp(layers: list[tuple[object, object]]) -> nn.Sequential:
                acts = {"tanh": nn.Tanh, "relu": nn.ReLU}
                mods: list[nn.Module] = [nn.Flatten()]
                for i, (w, b) in enumerate(layers):
                    lin = nn.Linear(w.shape[1], w.shape[0])  # type: ignore[attr-defined]
                    with torch.no_grad():
                        lin.weight.copy_(torch.as_tensor(w))
                        lin.bias.copy_(torch.as_tensor(b))
                    mods.append(lin)
                    if i != len(layers) - 1:
                        mods.append(acts[case.activation]())
                return nn.Sequential(*mods)

            vf = mlp(list(case.value_layers)) if case.value_layers is not None else None
            _CACHE[case.name] = export_policy(mlp(list(case.pi_layers)), obs_space=case.obs_shape,
                                              action_space=case.action_space, format="onnx", value_module=vf,
                                              log_std=case.log_std)
        return _CACHE[case.name]
