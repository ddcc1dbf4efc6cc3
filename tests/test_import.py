"""`import relayrl` stays light, and the public API is re-exported once, under relayrl."""

from __future__ import annotations

import subprocess
import sys

import relayrl

HEAVY = (
    "torch", "onnxruntime", "onnx", "cupy", "zmq", "nats", "pyarrow", "opentelemetry.sdk", "gymnasium", "pettingzoo",
)


def test_import_relayrl_imports_no_heavy_library() -> None:
    code = (
        "import sys, relayrl, relayrl.backends, relayrl.spaces, relayrl.abc\n"
        "relayrl.backends.available()\n"
        f"heavy = {HEAVY!r}\n"
        "bad = sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in heavy))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"RELAYRL_PLUGINS": "", "PATH": ""})
    assert out.stdout.strip() == "", f"import relayrl pulled in: {out.stdout.strip()}"


def test_public_names_live_under_relayrl() -> None:
    for name in dir(relayrl):
        obj = getattr(relayrl, name)
        if name.startswith("_") or isinstance(obj, type(relayrl)):
            continue
        module = getattr(obj, "__module__", None)
        if module is not None and isinstance(obj, type):
            assert module == "relayrl", f"relayrl.{name}.__module__ is {module}"


def test_numpy_backend_is_registered_through_the_entry_point() -> None:
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="relayrl.backends")}
    assert eps["numpy"] == "relayrl._numpy_backend:NumpyBackend"
    assert "numpy" in relayrl.backends.available()
    assert relayrl.backends.get("numpy").name == "numpy"
