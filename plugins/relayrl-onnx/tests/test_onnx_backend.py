"""The onnx backend: input/output naming, RelayRL-style models, masks, threads and devices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from _onnx_graphs import mlp_onnx
from relayrl_onnx import OnnxBackend, get_num_threads, session_options, set_num_threads
from relayrl_onnx import _backend as backend_module

import relayrl
from relayrl import BackendUnavailableError, ConfigError, ModelError, ModelModule, make_head
from relayrl.spaces import Discrete
from relayrl.testing import REFERENCE_CASES

CASE = REFERENCE_CASES["discrete"]  # obs (4,), Discrete(3), tanh, with a value network
GAUSS = REFERENCE_CASES["gaussian"]  # obs (3,), Box(2,)


def onnx_module(data: bytes, *, case: Any = CASE, value: bool = True, validate: bool = True) -> ModelModule:
    return ModelModule.create(backend="onnx", model_file="policy.onnx", data=data, obs_shape=case.obs_shape,
                              action_space=case.action_space, value_output=value, validate=validate)


def obs_batch(n: int, case: Any = CASE) -> np.ndarray[Any, Any]:
    return np.random.default_rng(9).standard_normal((n, *case.obs_shape)).astype(np.float32)


def reference(case: Any, obs: np.ndarray[Any, Any]) -> Any:
    return case.numpy_module().policy().forward(obs)


@pytest.fixture(autouse=True)
def default_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_module, "_threads", None)
    monkeypatch.delenv("RELAYRL_ONNX_THREADS", raising=False)


def test_outputs_are_found_by_name_in_any_order() -> None:
    data = mlp_onnx(CASE.obs_shape, CASE.pi_layers, value_layers=CASE.value_layers, output_names=["logits", "value"])
    policy = onnx_module(data).policy()
    assert policy.input_name == "obs"
    assert policy.output_map == {"logits": "logits", "value": "value"}
    # the same graph with outputs declared value-first still maps by name
    swapped = mlp_onnx(GAUSS.obs_shape, GAUSS.pi_layers, value_layers=GAUSS.value_layers, log_std=GAUSS.log_std,
                       output_names=["mean", "log_std", "value"])
    out = onnx_module(swapped, case=GAUSS).policy().forward(obs_batch(5, GAUSS))
    ref = reference(GAUSS, obs_batch(5, GAUSS))
    np.testing.assert_allclose(out.mean, ref.mean, atol=1e-5)
    np.testing.assert_allclose(out.value, ref.value, atol=1e-5)
    np.testing.assert_allclose(out.log_std, ref.log_std, atol=1e-6)


def test_unnamed_outputs_are_read_by_position_and_a_column_value_is_flattened() -> None:
    data = mlp_onnx(CASE.obs_shape, CASE.pi_layers, value_layers=CASE.value_layers, input_name="x",
                    output_names=["out0", "out1"], value_column=True)
    policy = onnx_module(data).policy()
    assert policy.input_name == "x"
    assert policy.output_map == {"logits": "out0", "value": "out1"}
    obs = obs_batch(7)
    out, ref = policy.forward(obs), reference(CASE, obs)
    np.testing.assert_allclose(out.logits, ref.logits, atol=1e-5)
    assert out.value is not None and out.value.shape == (7,)
    np.testing.assert_allclose(out.value, ref.value, atol=1e-5)


def test_a_missing_named_output_is_rejected() -> None:
    data = mlp_onnx(CASE.obs_shape, CASE.pi_layers, output_names=["logits"])
    with pytest.raises(ModelError, match="value"):
        onnx_module(data, value=True)
    gauss = mlp_onnx(GAUSS.obs_shape, GAUSS.pi_layers, output_names=["mean"])
    with pytest.raises(ModelError, match="log_std"):
        onnx_module(gauss, case=GAUSS, value=False)


def test_too_few_unnamed_outputs_are_rejected() -> None:
    data = mlp_onnx(CASE.obs_shape, CASE.pi_layers, output_names=["out0"])
    with pytest.raises(ModelError, match="outputs"):
        onnx_module(data, value=True)


def test_a_mask_input_gets_the_mask_or_all_ones() -> None:
    data = mlp_onnx(CASE.obs_shape, CASE.pi_layers, value_layers=CASE.value_layers, mask_input=True)
    policy = onnx_module(data).policy()
    obs = obs_batch(4)
    ref = reference(CASE, obs)
    np.testing.assert_allclose(policy.forward(obs).logits, ref.logits, atol=1e-5)
    mask = np.ones((4, 3), dtype=bool)
    mask[:, 1] = False
    masked = policy.forward(obs, mask).logits
    assert masked is not None
    np.testing.assert_allclose(masked[:, [0, 2]], ref.logits[:, [0, 2]], atol=1e-5)
    assert np.all(masked[:, 1] < -1e8)


def test_a_model_with_unknown_inputs_is_rejected() -> None:
    data = mlp_onnx(CASE.obs_shape, CASE.pi_layers, input_name="x", mask_input=True)
    # two inputs, "x" and "mask": fine ("x" is the only non-mask input)
    assert onnx_module(data, value=False).policy().input_name == "x"
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(data)
    model.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["batch", 1]))
    with pytest.raises(ModelError, match="inputs"):
        onnx_module(model.SerializeToString(), value=False)


def test_garbage_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        onnx_module(b"definitely not onnx", value=False)


# -- RelayRL-style models --------------------------------------------------------------------------------


def test_a_relayrl_model_directory_with_a_fixed_batch_of_one_serves_any_batch(tmp_path: Path) -> None:
    case = REFERENCE_CASES["discrete-relu-novalue"]  # obs (6,), Discrete(5)
    data = mlp_onnx(case.obs_shape, case.pi_layers, activation="relu", input_name="input",
                    output_names=["output"], batch=1)
    (tmp_path / "client_model.onnx").write_bytes(data)
    (tmp_path / "metadata.json").write_text(json.dumps({
        "model_file": "client_model.onnx", "model_type": "onnx", "input_dtype": {"NdArray": "F32"},
        "output_dtype": {"NdArray": "F32"}, "input_shape": [1, 6], "output_shape": [1, 5], "default_device": "cpu"}))
    module = ModelModule.load(tmp_path)
    assert module.backend == "onnx"
    policy = module.policy()
    assert policy.input_name == "input" and policy.output_map == {"logits": "output"}
    obs = obs_batch(9, case)
    ref = reference(case, obs)
    np.testing.assert_allclose(policy.forward(obs).logits, ref.logits, atol=1e-5)
    act, logp = make_head(module.metadata).sample(policy.forward(obs), np.random.default_rng(0), deterministic=True)
    np.testing.assert_array_equal(act, ref.logits.argmax(axis=1))
    log_softmax = ref.logits - np.log(np.exp(ref.logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(logp, log_softmax[np.arange(9), act], atol=1e-5)


async def test_a_relayrl_onnx_model_serves_through_the_agent(tmp_path: Path) -> None:
    case = REFERENCE_CASES["discrete-relu-novalue"]
    data = mlp_onnx(case.obs_shape, case.pi_layers, activation="relu", input_name="input",
                    output_names=["output"], batch=1)
    module = ModelModule.create(backend="onnx", model_file="client_model.onnx", data=data, obs_shape=(6,),
                                action_space=Discrete(5))
    obs = obs_batch(4, case)
    async with relayrl.open_agent(module, actors=4, seed=0) as agent:
        batch = await agent.request_action(agent.actor_ids, obs, deterministic=True)
    np.testing.assert_array_equal(batch.act, reference(case, obs).logits.argmax(axis=1))
    assert np.all(np.isfinite(batch.logp))


# -- threads and devices -----------------------------------------------------------------------------------


def test_sessions_use_one_thread_sequential_execution_and_all_optimisations() -> None:
    opts = session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    policy = onnx_module(mlp_onnx(CASE.obs_shape, CASE.pi_layers), value=False).policy()
    assert policy.session.get_session_options().intra_op_num_threads == 1


def test_the_thread_count_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYRL_ONNX_THREADS", "2")
    assert get_num_threads() == 2
    policy = onnx_module(mlp_onnx(CASE.obs_shape, CASE.pi_layers), value=False).policy()
    assert policy.session.get_session_options().intra_op_num_threads == 2
    set_num_threads(3)  # the function wins over the environment
    assert session_options().intra_op_num_threads == 3


@pytest.mark.parametrize("bad", ["zero", "0", "-2"])
def test_a_bad_thread_env_var_is_a_config_error(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("RELAYRL_ONNX_THREADS", bad)
    module = onnx_module(mlp_onnx(CASE.obs_shape, CASE.pi_layers), value=False, validate=False)
    with pytest.raises(ConfigError, match="RELAYRL_ONNX_THREADS"):
        module.validate()


@pytest.mark.parametrize("bad", [0, -1, True, 2.0])
def test_a_bad_thread_count_is_rejected(bad: Any) -> None:
    with pytest.raises(ConfigError):
        set_num_threads(bad)
    assert get_num_threads() == 1


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="checks the error without CUDA")
def test_cuda_without_the_cuda_provider_is_unavailable() -> None:
    module = onnx_module(mlp_onnx(CASE.obs_shape, CASE.pi_layers), value=False)
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        OnnxBackend().load(module, "cuda")
    with pytest.raises(BackendUnavailableError):
        module.validate("cuda")
    assert OnnxBackend().devices() == ["cpu"]


def test_unknown_devices_are_unavailable() -> None:
    module = onnx_module(mlp_onnx(CASE.obs_shape, CASE.pi_layers), value=False)
    with pytest.raises(BackendUnavailableError):
        OnnxBackend().load(module, "tpu")


@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
def test_cuda_gives_the_cpu_results() -> None:
    module = onnx_module(mlp_onnx(CASE.obs_shape, CASE.pi_layers, value_layers=CASE.value_layers))
    obs = obs_batch(64)
    gpu, cpu = module.policy("cuda").forward(obs), module.policy().forward(obs)
    np.testing.assert_allclose(gpu.logits, cpu.logits, atol=1e-5)
    np.testing.assert_allclose(gpu.value, cpu.value, atol=1e-5)


def test_gaussian_model_log_std_can_be_per_row() -> None:
    # a model may output log_std per row ([batch, action_dim]) instead of [action_dim]
    import onnx
    from onnx import helper

    data = mlp_onnx(GAUSS.obs_shape, GAUSS.pi_layers, log_std=GAUSS.log_std, output_names=["mean", "log_std0"])
    model = onnx.load_from_string(data)
    graph = model.graph
    last = f"pi.{len(GAUSS.pi_layers) - 1}.out"
    graph.node.append(helper.make_node("Mul", [last, "zero"], ["z"]))
    graph.node.append(helper.make_node("Add", ["z", "log_std0"], ["log_std"]))
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"))
    graph.output.append(helper.make_tensor_value_info("log_std", onnx.TensorProto.FLOAT, ["batch", 2]))
    out = onnx_module(model.SerializeToString(), case=GAUSS, value=False).policy().forward(obs_batch(5, GAUSS))
    assert out.log_std is not None and out.log_std.shape == (5, 2)
    assert GAUSS.log_std is not None
    np.testing.assert_allclose(out.log_std, np.broadcast_to(GAUSS.log_std, (5, 2)), atol=1e-6)


def test_observations_of_another_dtype_or_layout_are_accepted() -> None:
    policy = onnx_module(mlp_onnx(CASE.obs_shape, CASE.pi_layers), value=False).policy()
    obs = obs_batch(6)
    expected = policy.forward(obs).logits
    assert expected is not None
    np.testing.assert_allclose(policy.forward(obs.astype(np.float64)).logits, expected, atol=1e-6)
    np.testing.assert_allclose(policy.forward(obs[::-1]).logits, expected[::-1], atol=1e-6)
    frozen = obs.copy()
    frozen.flags.writeable = False
    np.testing.assert_array_equal(policy.forward(frozen).logits, expected)
