"""Atomic outputs: staged folders vanish on errors, on SIGTERM, and after a SIGKILL (next run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medadapt.io.atomic import atomic_path, remove_stale_stages, staged_dir, write_text


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_error_inside_the_block_leaves_nothing(tmp_path: Path):
    with pytest.raises(RuntimeError), staged_dir(tmp_path / "out") as stage:
        (stage / "a.png").write_bytes(b"x")
        raise RuntimeError("bad input")
    assert not (tmp_path / "out").exists()
    assert _hidden(tmp_path) == []


def test_stage_of_a_killed_process_is_removed_by_the_next_run(tmp_path: Path):
    dead, alive = _dead_pid(), os.getpid()
    orphan = tmp_path / f".out.{dead}.k2j4.tmp"  # left by a SIGKILLed `medadapt predict --out out`
    running = tmp_path / f".out.{alive}.q7w1.tmp"  # another command still writing to out
    other = tmp_path / f".other.{dead}.a1b2.tmp"  # a different destination
    dotted = tmp_path / f".out.999999999.{alive}.zz9.tmp"  # running stage of "out.999999999" (no such pid)
    for d in (orphan, running, other, dotted):
        d.mkdir()
        (d / "case.nii.gz").write_bytes(b"partial")
    with staged_dir(tmp_path / "out") as stage:
        assert stage.name.startswith(f".out.{alive}.")
        (stage / "a.png").write_bytes(b"x")
    assert not orphan.exists()
    assert running.exists() and other.exists() and dotted.exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]
    assert remove_stale_stages(tmp_path / "other") == [other]


def test_temp_files_of_a_killed_process_are_removed_by_the_next_write(tmp_path: Path):
    dead, alive = _dead_pid(), os.getpid()
    orphan = tmp_path / f".case.nii.gz.{dead}.k2j4x9_1.tmp.nii.gz"  # a SIGKILLed predict's half-written file
    running = tmp_path / f".case.nii.gz.{alive}.q7w1ab2c.tmp.nii.gz"  # another process still writing
    notes = tmp_path / ".notes.tmp"  # not one of ours
    for f in (orphan, running, notes):
        f.write_bytes(b"partial")
    with atomic_path(tmp_path / "other.nii.gz") as tmp:
        assert tmp.name.startswith(f".other.nii.gz.{alive}.") and tmp.name.endswith(".tmp.nii.gz")
        tmp.write_bytes(b"x")
    assert not orphan.exists() and running.exists() and notes.exists()
    orphan.write_bytes(b"partial")  # the folder is swept once per process: later writes do not list it again
    write_text(tmp_path / "a.txt", "y")
    assert orphan.exists() and (tmp_path / "a.txt").read_text() == "y"


@pytest.mark.parametrize("handled", [True, False])
def test_sigterm_removes_the_stage_when_the_cli_handles_it(tmp_path: Path, handled: bool):
    code = f"""
import os, signal, time
from pathlib import Path
from medadapt.cli.main import exit_cleanly_on_termination
from medadapt.io.atomic import staged_dir
if {handled}:
    exit_cleanly_on_termination()
with staged_dir(Path(r"{tmp_path}") / "out") as stage:
    (stage / "a.png").write_bytes(b"x")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert not (tmp_path / "out").exists()
    if handled:
        assert proc.returncode == 128 + 15, proc.stderr.decode()
        assert _hidden(tmp_path) == []
    else:  # Python's default: the process dies at once and its stage stays behind
        assert proc.returncode == -15
        assert len(_hidden(tmp_path)) == 1
