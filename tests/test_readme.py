"""The README's library example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert blocks, "README has no python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0], encoding="utf-8")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("8 trajectories")


def test_readme_gives_the_two_setup_commands_first() -> None:
    text = README.read_text(encoding="utf-8")
    commands = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    assert "pip install -c constraints.txt -r requirements-dev.txt && relayrl train CartPole-v1" in commands[0]
    assert "pip install -c constraints.txt -r requirements-dev.txt && python -m pytest" in commands[1]
