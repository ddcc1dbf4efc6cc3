"""The example backend proves itself with relayrl's conformance kit, plus its own bad-input tests."""

from __future__ import annotations

import json

import attrs
import numpy as np
import pytest
from relayrl_example_backend import FORMAT, JsonMLPBackend, export_json_mlp, from_reference_case

import relayrl
from relayrl import BackendUnavailableError, ModelError, ModelModule
from relayrl.spaces import Discrete
from relayrl.testing import REFERENCE_CASES, BackendConformance, ReferenceCase


class TestExampleBackend(BackendConformance):
    """Every conformance test, for every reference case: that is the whole proof."""

    backend = "example-json"

    def convert(self, case: ReferenceCase) -> ModelModule:
        return from_reference_case(case)


def _doc(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "format": FORMAT, "version": 1, "activation": "tanh",
        "policy": [{"weight": [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], "bias": [0.0, 0.0, 0.0]}],
        "value": None, "log_std": None,
    }
    doc.update(changes)
    return doc


def _module(doc: object) -> ModelModule:
    return ModelModule.create(backend="example-json", model_file="policy.json", data=json.dumps(doc).encode(),
                              obs_shape=(2,), action_space=Discrete(3), validate=False)


def test_a_good_file_runs() -> None:
    module = _module(_doc())
    module.validate()
    out = module.policy().forward(np.array([[1.0, 2.0]], np.float32))
    assert out.logits is not None
    np.testing.assert_allclose(out.logits, [[1.0, 2.0, 3.0]], atol=1e-6)  # one layer: no activation


@pytest.mark.parametrize(("doc", "match"), [
    (_doc(format="something-else"), "is not a"),
    (_doc(version=2), "version 2"),
    (_doc(activation="gelu"), "activation 'gelu'"),
    (_doc(policy=[]), "non-empty list"),
    (_doc(policy=[{"weight": [[1.0, 0.0]]}]), "exactly 'weight' and 'bias'"),
    (_doc(policy=[{"weight": [[1.0, "x"]], "bias": [0.0]}]), "not numeric"),
    (_doc(policy=[{"weight": [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], "bias": [0.0]}]), "do not fit"),
    (_doc(policy=[{"weight": [[1.0], [0.0], [1.0]], "bias": [0.0, 0.0, 0.0]}]), "takes 1 inputs"),
    (_doc(policy=[{"weight": [[1.0, 0.0]], "bias": [0.0]}]), "gives 1 outputs"),
    (_doc(value=[{"weight": [[1.0, 0.0]], "bias": [0.0]}]), "value_output"),
    ([1, 2, 3], "is not a"),
])
def test_rejects_bad_files(doc: object, match: str) -> None:
    module = _module(doc)
    with pytest.raises(ModelError, match=match):
        module.validate()
    assert ModelModule(module.metadata, module.data) == module  # the module is untouched


def test_rejects_non_utf8_and_other_devices() -> None:
    raw = b"\xff\xfe not json"
    import hashlib

    meta = attrs.evolve(_module(_doc()).metadata, checksum=hashlib.sha256(raw).hexdigest())
    with pytest.raises(ModelError, match="not a JSON document"):
        ModelModule(meta, raw).validate()
    with pytest.raises(BackendUnavailableError, match="'cpu' only"):
        JsonMLPBackend().load(_module(_doc()), "cuda")


def test_export_validates_and_is_listed() -> None:
    case = REFERENCE_CASES["gaussian"]
    module = export_json_mlp(case.obs_shape, case.action_space, case.pi_layers, value_layers=case.value_layers,
                             log_std=case.log_std, version=3)
    assert module.version == 3 and module.backend == "example-json"
    assert "example-json" in relayrl.backends.available()
    with pytest.raises(ModelError, match="log_std"):
        export_json_mlp(case.obs_shape, case.action_space, case.pi_layers, value_layers=case.value_layers)
