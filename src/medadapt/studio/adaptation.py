"""Adaptation in the loop: after a save, a background fit refreshes the adapter from every saved case.

Each fit is a normal ``medadapt fit`` run (the default ``decoder`` recipe with box prompts, a small step
budget, every labelled case trains: ``--test 0``) in ``DATA_DIR/.medadapt-studio/adapters/NNN``, usable
with ``predict``, ``evaluate`` and ``export``. Its case list is a CSV beside it (the folder may hold
unlabelled images, which no dataset layout accepts as training cases). The slice embeddings go to one
cache folder shared by all fits, so a refit encodes only the newly saved cases. Fits start from the base
model: the fit library has no warm start from a previous adapter.

When a fit ends, the studio loads its adapter and switches to it between two interactions (cases that
are open keep their session until they are saved); ``current.json`` names the adapter in use, so a
restarted studio resumes it. Saves during a fit ask for one more fit, started when the running one ends.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

from medadapt.errors import MedadaptError
from medadapt.io.atomic import write_json, write_text
from medadapt.run import RunFolder, read_json
from medadapt.studio.cases import CaseFolder

DEFAULT_STEPS = 150


class AdaptationLoop:
    """Background fits of the folder's labelled cases; ``on_adapter(run)`` is called with each finished run."""

    def __init__(self, folder: CaseFolder, on_adapter: Callable[[Path], None], *, steps: int = DEFAULT_STEPS,
                 model: str = "litemedsam", min_cases: int = 1):
        self.folder = folder
        self.on_adapter = on_adapter
        self.steps = steps
        self.model = model
        self.min_cases = min_cases
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wanted = False
        self.state = "idle"  # idle | fitting | failed
        self.running: dict | None = None
        self.last: dict | None = None

    @property
    def adapters_dir(self) -> Path:
        return self.folder.state_dir / "adapters"

    @property
    def current_file(self) -> Path:
        return self.folder.state_dir / "current.json"

    # -- adapters on disk ------------------------------------------------------------------------
    def finished(self) -> list[Path]:
        """Adapter runs that finished (their adapter is saved), oldest first."""
        if not self.adapters_dir.is_dir():
            return []
        runs = [p for p in sorted(self.adapters_dir.iterdir()) if p.is_dir() and p.name.isdigit()]
        return [p for p in runs if RunFolder(p).adapter_tensors.is_file() and RunFolder(p).result_path.is_file()]

    def current(self) -> Path | None:
        """The adapter the studio used last (``current.json``), if it is still a finished run."""
        meta = read_json(self.current_file) if self.current_file.is_file() else None
        run = self.adapters_dir / str((meta or {}).get("adapter", ""))
        return run if meta and run in self.finished() else None

    def set_current(self, run: Path) -> None:
        write_json(self.current_file, {"adapter": run.name})

    # -- fitting ------------------------------------------------------------------------------------
    def request(self) -> None:
        """Ask for a fit (after a save); runs now, or when the running fit ends."""
        with self._lock:
            self._wanted = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="medadapt-studio-fit", daemon=True)
                self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the background fits to end (tests, shutdown); False on timeout."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._wanted:
                    return
                self._wanted = False
            self._fit_once()

    def _labelled(self) -> list:
        return [c for c in self.folder.cases.values() if self.folder.has_label(c)]

    def _fit_once(self) -> None:
        from medadapt.engine.sam_fit import FitOptions
        from medadapt.pipeline.fit import fit_segment

        cases = self._labelled()
        if len(cases) < self.min_cases:
            return
        number = max((int(p.name) for p in self.adapters_dir.glob("[0-9]*") if p.name.isdigit()), default=0) + 1
        out = self.adapters_dir / f"{number:03d}"
        listing = self.adapters_dir / f"{number:03d}-cases.csv"
        started = time.time()
        self.state, self.running = "fitting", {"adapter": out.name, "cases": len(cases), "started": started}
        try:
            write_text(listing, _case_csv(cases, self.folder.modality))
            opts = FitOptions.build({
                "data": str(listing), "out": str(out), "model": self.model, "method": "decoder", "prompt": "box",
                "test": 0, "shots": len(cases), "max_steps": self.steps, "progress": False,
                "cache_dir": str(self.folder.state_dir / "cache"),
            })
            result = fit_segment(opts, report=False).result
            self.on_adapter(out)
            self.set_current(out)
            self.state = "idle"
            self.last = {"adapter": out.name, "cases": len(cases), "seconds": round(time.time() - started, 1),
                         "val_dsc": result.get("best_metric"), "val_cases": len(result.get("val_cases") or []),
                         "error": None}
        except Exception as err:  # the studio keeps running with its current adapter; the page shows why
            self.state = "failed"
            message = str(err) if isinstance(err, MedadaptError) else f"{type(err).__name__}: {err}"
            self.last = {"adapter": out.name, "cases": len(cases), "seconds": round(time.time() - started, 1),
                         "val_dsc": None, "error": message}
        finally:
            self.running = None

    def status(self) -> dict:
        current = self.current()
        return {"state": self.state, "steps": self.steps, "labelled": len(self._labelled()),
                "current": current.name if current else None, "running": self.running, "last": self.last,
                "queued": self._wanted}


def _case_csv(cases, modality: str) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["image", "mask", "modality"])
    for c in cases:
        writer.writerow([str(c.image), str(c.label), "" if modality == "auto" else modality])
    return buf.getvalue()
