"""Hand-built ONNX graphs (onnx.helper) for the onnx backend tests: no torch needed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Layers = Sequence[tuple[Any, Any]]


def _mlp(nodes: list[Any], inits: list[Any], x: str, layers: Layers, activation: str, prefix: str) -> str:
    for i, (w, b) in enumerate(layers):
        wn, bn, out = f"{prefix}.{i}.w", f"{prefix}.{i}.b", f"{prefix}.{i}.out"
        inits.append(numpy_helper.from_array(np.asarray(w, dtype=np.float32), wn))
        inits.append(numpy_helper.from_array(np.asarray(b, dtype=np.float32), bn))
        nodes.append(helper.make_node("Gemm", [x, wn, bn], [out], transB=1))
        x = out
        if i == len(layers) - 1:
            break
        act = f"{prefix}.{i}.act"
        if activation == "tanh":
            nodes.append(helper.make_node("Tanh", [x], [act]))
        elif activation == "relu":
            nodes.append(helper.make_node("Relu", [x], [act]))
        elif activation == "leaky_relu":
            nodes.append(helper.make_node("LeakyRelu", [x], [act], alpha=0.01))
        elif activation == "elu":
            nodes.append(helper.make_node("Elu", [x], [act], alpha=1.0))
        elif activation == "sigmoid":
            nodes.append(helper.make_node("Sigmoid", [x], [act]))
        elif activation == "silu":
            nodes.append(helper.make_node("Sigmoid", [x], [act + ".s"]))
            nodes.append(helper.make_node("Mul", [x, act + ".s"], [act]))
        else:
            nodes.append(helper.make_node("Identity", [x], [act]))
        x = act
    return x


def mlp_onnx(
    obs_shape: tuple[int, ...],
    pi_layers: Layers,
    *,
    value_layers: Layers | None = None,
    activation: str = "tanh",
    log_std: Any = None,
    input_name: str = "obs",
    output_names: Sequence[str] | None = None,
    batch: int | str = "batch",
    value_column: bool = False,
    mask_input: bool = False,
) -> bytes:
    """An ONNX MLP: input ``[batch, *obs_shape]``; outputs logits/mean (+log_std) (+value).

    ``output_names`` renames the outputs (default: ``logits`` or ``mean``, ``log_std``, ``value``);
    ``batch=1`` fixes the batch axis as RelayRL's exports do; ``value_column`` leaves the value
    as ``[batch, 1]``; ``mask_input`` adds a float ``mask`` input that is added as ``(mask-1)*1e9``.
    """
    nodes: list[Any] = []
    inits: list[Any] = []
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, *obs_shape])]
    nodes.append(helper.make_node("Flatten", [input_name], ["flat"], axis=1))
    head = _mlp(nodes, inits, "flat", pi_layers, activation, "pi")
    out_dim = int(np.asarray(pi_layers[-1][0]).shape[0])
    if mask_input:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [batch, out_dim]))
        inits.append(numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"))
        inits.append(numpy_helper.from_array(np.array(1e9, dtype=np.float32), "big"))
        nodes.append(helper.make_node("Sub", ["mask", "one"], ["m0"]))
        nodes.append(helper.make_node("Mul", ["m0", "big"], ["m1"]))
        nodes.append(helper.make_node("Add", [head, "m1"], ["masked"]))
        head = "masked"
    gaussian = log_std is not None
    names = list(output_names or (["mean", "log_std"] if gaussian else ["logits"]) + (
        ["value"] if value_layers is not None else []))
    produced = [head]
    shapes: list[list[int | str]] = [[batch, out_dim]]
    if gaussian:
        inits.append(numpy_helper.from_array(np.asarray(log_std, dtype=np.float32).reshape(-1), "log_std.p"))
        produced.append("log_std.p")
        shapes.append([out_dim])
    if value_layers is not None:
        v = _mlp(nodes, inits, "flat", value_layers, activation, "vf")
        if not value_column:
            inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "vshape"))
            nodes.append(helper.make_node("Reshape", [v, "vshape"], ["v.flat"]))
            v = "v.flat"
        produced.append(v)
        shapes.append([batch, 1] if value_column else [batch])
    outputs = []
    for src, name, shape in zip(produced, names, shapes):
        nodes.append(helper.make_node("Identity", [src], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "relayrl_test_mlp", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data
