"""The built-in numpy backend passes the public conformance kit, like any plugin must."""

from __future__ import annotations

from relayrl import ModelModule
from relayrl.testing import BackendConformance, ReferenceCase


class TestNumpyBackend(BackendConformance):
    backend = "numpy"

    def convert(self, case: ReferenceCase) -> ModelModule:
        return case.numpy_module(validate=False)
