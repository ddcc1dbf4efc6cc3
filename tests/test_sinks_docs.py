"""The runnable example of docs/backpressure.md runs and its assertions hold."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parent.parent / "docs" / "examples" / "sinks_backpressure.py"


def test_backpressure_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "written=100" in out and "dropped=15" in out and "dropped=7" in out
