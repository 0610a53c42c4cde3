"""Provenance of a benchmark result: what code ran, where, when, and how busy the machine was.

Every bench script stores :func:`start` in its JSON when it begins and refreshes it with
:func:`finish` before each write, so a result file says which commit (and whether the tree had
uncommitted changes) produced it, the CPU model and thread count, the load average at start and
end, the library versions, and whether the run continued an earlier, interrupted one.
``bench/tables.py`` prints these fields as each table's conditions; a field a file lacks is shown
as "not recorded". Standard library only (versions via importlib.metadata), so it imports nothing
heavy.

    .venv/bin/python bench/provenance.py --backfill   # files without a block: git history only
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FIELDS = ("git_commit", "git_dirty", "utc_start", "utc_end", "cpu_model", "cpu_count", "torch_threads",
          "load_avg_start", "load_avg_end", "torch", "openvino", "onnxruntime", "python", "resumed")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")  # only when the benchmark imported it: never import it here
    return torch.get_num_threads() if torch is not None else None


def provenance() -> dict:
    """A snapshot: commit, dirty flag, UTC time, CPU, threads, load average, versions."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "utc_time": _utc_now(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": _torch_threads(),
        "load_avg": list(os.getloadavg()),
        "torch": _version("torch"),
        "openvino": _version("openvino"),
        "onnxruntime": _version("onnxruntime"),
        "python": platform.python_version(),
    }


def start(resumed: bool = False) -> dict:
    """The record of a benchmark run as it begins; ``resumed``: it continues an interrupted run."""
    snap = provenance()
    record = {"source": "recorded", **{k: None for k in FIELDS}}
    record.update({k: v for k, v in snap.items() if k in FIELDS})
    record["utc_start"] = snap["utc_time"]
    record["load_avg_start"] = snap["load_avg"]
    record["resumed"] = bool(resumed)
    return record


def finish(record: dict) -> dict:
    """``record`` with the end time, load average at the end and the thread count now in use."""
    out = dict(record)
    out["utc_end"] = _utc_now()
    out["load_avg_end"] = list(os.getloadavg())
    out["torch_threads"] = _torch_threads() or record.get("torch_threads")
    return out


def save(out: Path, result: dict, record: dict) -> None:
    """Write ``result`` with its finished provenance ``record`` to ``out`` atomically and say so."""
    from medadapt.io.atomic import write_json

    result["provenance"] = finish(record)
    write_json(out, result)
    print(f"wrote {out}")


def from_git_history(path: Path) -> dict:
    """What git alone establishes about an older result file: the commits that added it and last
    changed it, and their dates. Everything else is unknown (None), never guessed; a file git does
    not know yet gets ``"source": "not recorded"`` and nothing else."""
    rel = str(path.resolve().relative_to(ROOT))
    log = _git("log", "--follow", "--format=%H %ct", "--", rel) or ""
    commits = [line.split() for line in log.splitlines() if line.strip()]

    def utc(ts: str) -> str:
        return _dt.datetime.fromtimestamp(int(ts), _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    record = {"source": "git history" if commits else "not recorded", **{k: None for k in FIELDS}}
    if commits:
        record.update({"file_added_commit": commits[-1][0], "file_added_utc": utc(commits[-1][1]),
                       "file_last_changed_commit": commits[0][0], "file_last_changed_utc": utc(commits[0][1])})
    return record


def backfill(paths: list[Path]) -> list[Path]:
    """Add a git-history provenance block to each result file that has none; returns those changed."""
    changed = []
    for path in paths:
        data = json.loads(path.read_text())
        if "provenance" in data:
            continue
        data["provenance"] = from_git_history(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
        changed.append(path)
    return changed


if __name__ == "__main__":
    if sys.argv[1:] == ["--backfill"]:
        for p in backfill(sorted(RESULTS.glob("*.json"))):
            print(f"added git-history provenance to {p.relative_to(ROOT)}")
    else:
        print(json.dumps(finish(start()), indent=2))
