"""Every Python example in docs/agent.md and docs/cancellation.md runs as it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _examples() -> list[tuple[str, str]]:
    out = []
    for name in ("agent.md", "cancellation.md"):
        text = (DOCS / name).read_text(encoding="utf-8")
        for k, block in enumerate(re.findall(r"```python\n(.*?)```", text, flags=re.S)):
            out.append((f"{name}#{k}", block))
    return out


EXAMPLES = _examples()


def test_docs_have_examples() -> None:
    assert len(EXAMPLES) >= 7


@pytest.mark.parametrize(("name", "code"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_example_runs(name: str, code: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(code, name, "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out  # every example prints what it shows
