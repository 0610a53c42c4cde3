"""docs/architecture.md's diagram and layer list are what docs/architecture_graph.py generates from the code
and from pyproject's layer contract (regenerate with `.venv/bin/python docs/architecture_graph.py`)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_architecture_doc_is_generated_from_the_code():
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "architecture_graph.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
