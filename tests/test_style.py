"""The tree stays formatted as ``[tool.ruff]`` in pyproject.toml says (applied once, in its own commit)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_python_tree_is_formatted_with_ruff():
  result = subprocess.run(
    [sys.executable, "-m", "ruff", "format", "--check", "jaxmi", "tests", "configs", "bench"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, f"run `ruff format jaxmi tests configs bench`:\n{result.stdout}{result.stderr}"
