"""The layer order of docs/architecture.md holds in the code: `lint-imports` with pyproject's contracts.

The contracts (``[tool.importlinter]`` in pyproject.toml): packages import only downwards along the data
flow, and no import cycle exists between sibling modules or packages at any depth. import-linter builds
its graph with grimp, which also records imports inside function bodies, so a lazy import does not hide
an arrow (the second test shows that on a throw-away package).
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _lint_imports(cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "lint-imports"
    cmd = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return subprocess.run([*cmd, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_layer_contract_and_no_cycles():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout, result.stdout[-3000:]


def test_function_level_import_breaks_the_contract(tmp_path):
    pkg = tmp_path / "src" / "layered_xyz"
    for name, body in {
        "__init__.py": "",
        "top.py": "",
        "bottom.py": "def f():\n    from layered_xyz import top  # lazy, upwards\n    return top\n",
    }.items():
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(body)
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""
        [tool.importlinter]
        root_package = "layered_xyz"

        [[tool.importlinter.contracts]]
        name = "layers"
        type = "layers"
        containers = ["layered_xyz"]
        layers = ["top", "bottom"]
    """))
    result = _lint_imports(tmp_path, extra_path=tmp_path / "src")
    assert result.returncode != 0
    assert "layered_xyz.bottom is not allowed to import layered_xyz.top" in result.stdout, result.stdout
