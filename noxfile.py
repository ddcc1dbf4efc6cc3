"""nox sessions for relayrl: `nox -l` lists them; `nox` runs the default ones.

Every install goes through constraints.txt, which pins torch to the CPU build available here.
The `gpu` session is off by default: run `nox -s gpu` on a machine with a CUDA device.
"""

from __future__ import annotations

import nox

nox.needs_version = ">=2024.4"
nox.options.default_venv_backend = "venv"
nox.options.sessions = ["core", "backend", "lint", "typing"]

PY = "3.11"
C = ("-c", "constraints.txt")
TEST_TOOLS = ("pytest>=8", "pytest-trio>=0.8", "hypothesis>=6")
PLUGINS = {
    # the torch session also installs the onnx backend so the ONNX parity tests run
    "torch": ("-e", "plugins/relayrl-torch[onnx]", "-e", "plugins/relayrl-onnx"),
    # the onnx session also installs relayrl-torch to check models exported from torch
    "onnx": ("-e", "plugins/relayrl-onnx[test]", "-e", "plugins/relayrl-torch[onnx]"),
    # the CuPy plugin without a CuPy wheel: the CPU half of its tests (kernels emulated, Array API logic)
    "cupy": ("-e", "plugins/relayrl-cupy", "array-api-strict>=2"),
    "example": ("-e", "docs/examples/relayrl-example-backend"),
}
PLUGIN_TESTS = {
    "cupy": "plugins/relayrl-cupy/tests",
    "torch": "plugins/relayrl-torch/tests",
    "onnx": "plugins/relayrl-onnx/tests",
    "example": "docs/examples/relayrl-example-backend/tests",
}


@nox.session(python=PY)
def core(session: nox.Session) -> None:
    """Core only, no plugin installed: the built-ins work and a missing backend gives the actionable error."""
    session.install(*C, "-e", ".[gym,arrow,otel,pettingzoo]", *TEST_TOOLS)
    session.run("python", "-m", "pytest", "tests", *session.posargs, env={"RELAYRL_PLUGINS": ""})


@nox.session(python=PY)
@nox.parametrize("backend", ["torch", "onnx", "cupy", "example"])
def backend(session: nox.Session, backend: str) -> None:
    """One backend plugin installed on top of the core, running its conformance and parity tests."""
    session.install(*C, "-e", ".[gym,arrow,otel,pettingzoo]", *PLUGINS[backend], *TEST_TOOLS)
    session.run("python", "-m", "pytest", PLUGIN_TESTS[backend], *session.posargs)


@nox.session(python=PY, default=False, tags=["gpu"])
def gpu(session: nox.Session) -> None:
    """CuPy backend on a CUDA machine (off by default; needs a GPU and a matching cupy wheel)."""
    cuda = session.posargs[0] if session.posargs else "cuda12"
    session.install(*C, "-e", ".", "-e", f"plugins/relayrl-cupy[{cuda}]", *TEST_TOOLS)
    session.run("python", "-m", "pytest", "plugins/relayrl-cupy/tests", env={"RELAYRL_REQUIRE_GPU": "1"})


@nox.session(python=PY)
def lint(session: nox.Session) -> None:
    """ruff, including the flake8-async (ASYNC) rules."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")


@nox.session(python=PY)
def typing(session: nox.Session) -> None:
    """mypy --strict over the core package and the plugins."""
    session.install(*C, "-r", "requirements-dev.txt", "mypy>=1.10")
    session.run("mypy", "relayrl", "plugins/relayrl-torch/src/relayrl_torch", "plugins/relayrl-onnx/src/relayrl_onnx",
                "plugins/relayrl-cupy/src/relayrl_cupy")


@nox.session(python=PY)
def tests(session: nox.Session) -> None:
    """The whole suite exactly as CI runs it (everything in requirements-dev.txt)."""
    session.install(*C, "-r", "requirements-dev.txt")
    session.run("python", "-m", "pytest", *session.posargs)
