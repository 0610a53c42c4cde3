"""Adaptation in the loop: after a save, a background fit refreshes the adapter from every saved case.

Each fit is a normal ``medadapt fit`` run (the default ``decoder`` recipe with box prompts, a small step
budget, every labelled case trains: ``--test 0``) in ``DATA_DIR/.medadapt-studio/adapters/NNN``, usable
with ``predict``, ``evaluate`` and ``export``. Its case list is a CSV beside it (the folder may hold
unlabelled images, which no dataset layout accepts as training cases). The slice embeddings go to one
cache folder shared by all fits, so a refit encodes only the newly saved cases. A fit is warm-started from
the adapter in use (its trainable weights start from that adapter's: ``init_adapter`` in the run's
``fit_config.json`` and ``result.json`` names it); with the zero-shot model in use it starts from the base
model.

When a fit ends, the studio loads its adapter and switches to it between two interactions (cases that
are open keep their session until they are saved), unless the user pinned an adapter; the user can also
go back to any earlier adapter, or to the zero-shot model. ``current.json`` names the adapter in use and
whether it is pinned, so a restarted studio resumes it. Saves during a fit ask for one more fit, started
when the running one ends. A fit that a stopped (or killed) studio left without its adapter is continued
by the restarted studio from its last checkpoint, as ``medadapt fit --resume`` would.

While a fit runs, the status names its phase: ``preparing`` (reading the cases and encoding newly saved
slices into the cache) until its first logged step, then ``training`` with the last logged step of the
total and its latest validation DSC, read from the run's own ``metrics.csv`` (the trainer's log; no
second channel to keep in step with it).
"""

from __future__ import annotations

import csv
import io
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from medadapt.errors import MedadaptError
from medadapt.io.atomic import write_json, write_text
from medadapt.run import RunFolder, read_json
from medadapt.studio.cases import CaseFolder

DEFAULT_STEPS = 150


def fit_progress(run: Path) -> dict:
    """The phase, last logged step and latest validation DSC of the fit writing ``run`` (see the module)."""
    try:
        lines = (run / "metrics.csv").read_text().splitlines()[1:]
    except OSError:
        lines = []
    step, val = None, None
    for line in lines:
        parts = line.split(",")
        if len(parts) != 5:
            continue  # a line cut by a concurrent write
        try:
            at, value = int(parts[0]), float(parts[4])
        except ValueError:
            continue
        step = at if step is None else max(step, at)
        if parts[2] == "val" and parts[3] == "val_dsc":
            val = value
    return {"phase": "preparing" if step is None else "training", "step": step, "val_dsc": val}


class AdaptationLoop:
    """Background fits of the folder's labelled cases; ``on_adapter(run)`` switches the studio to a run
    (None: the zero-shot model)."""

    def __init__(self, folder: CaseFolder, on_adapter: Callable[[Path | None], None], *, steps: int = DEFAULT_STEPS,
                 model: str = "litemedsam", min_cases: int = 1, build: Callable[[Path | None], object] | None = None,
                 encoder_engine: str = "auto"):
        self.folder = folder
        self.encoder_engine = encoder_engine  # fills the fits' embedding cache (fit's --encoder-engine)
        self.on_adapter = on_adapter
        self.build = build  # run folder (None: zero-shot) -> predictor, for the compare view
        self._models: OrderedDict[str | None, object] = OrderedDict()  # the last few compared models
        self.steps = steps
        self.model = model
        self.min_cases = min_cases
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wanted = False
        self._resume: Path | None = None  # an unfinished fit to continue before any new one
        self._active = False  # a worker thread runs (set and cleared under the lock)
        self.state = "idle"  # idle | fitting | failed
        self.running: dict | None = None
        self._running_dir: Path | None = None
        self.last: dict | None = None
        self.pinned = bool(self._current_meta().get("pinned", False))

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

    def _current_meta(self) -> dict:
        return (read_json(self.current_file) if self.current_file.is_file() else None) or {}

    def current(self) -> Path | None:
        """The adapter the studio used last (``current.json``), if it is still a finished run."""
        name = self._current_meta().get("adapter")
        run = self.adapters_dir / str(name)
        return run if name and run in self.finished() else None

    def set_current(self, run: Path | None) -> None:
        write_json(self.current_file, {"adapter": run.name if run else None, "pinned": self.pinned})

    def select(self, name: str | None, *, pin: bool) -> None:
        """Switch to the finished adapter ``name`` (None: the zero-shot model); ``pin`` keeps it when later
        fits end (they still run, and can be selected)."""
        run = self.run_of(name)
        self.on_adapter(run)
        self.pinned = pin
        self.set_current(run)

    def run_of(self, name: str | None) -> Path | None:
        """The finished adapter ``name`` (None: the zero-shot model); refuses any other name."""
        if name is None:
            return None
        run = self.adapters_dir / str(name)
        if not str(name).isdigit() or run not in self.finished():
            raise MedadaptError(f"the studio has no finished adapter '{name}'.",
                                fix=f"pick one of: {', '.join(p.name for p in self.finished()) or 'none yet'}.")
        return run

    def predictor_for(self, name: str | None):
        """The model of adapter ``name`` (None: zero-shot), built on first use; the last two stay loaded."""
        run = self.run_of(name)
        if self.build is None:
            raise MedadaptError("this studio cannot load other adapters.")
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
        model = self.build(run)
        with self._lock:
            self._models[name] = model
            while len(self._models) > 2:
                self._models.popitem(last=False)
        return model

    def adapters(self) -> list[dict]:
        """Every finished adapter with its cases, fit time and validation DSC (from its result.json)."""
        out = []
        for run in self.finished():
            r = RunFolder(run).read_result() or {}
            start = r.get("init_adapter")
            out.append({"adapter": run.name, "cases": len(r.get("train_cases") or []) + len(r.get("val_cases") or []),
                        "seconds": r.get("fit_seconds"), "val_dsc": r.get("best_metric"),
                        "from": Path(start).name if start else None})
        return out

    # -- fitting ------------------------------------------------------------------------------------
    def unfinished(self) -> Path | None:
        """The newest in-loop fit if it never saved its adapter (the studio was stopped during it)."""
        if not self.adapters_dir.is_dir():
            return None
        runs = [p for p in sorted(self.adapters_dir.iterdir()) if p.is_dir() and p.name.isdigit()]
        if not runs or runs[-1] in self.finished() or not RunFolder(runs[-1]).fit_config_path.is_file():
            return None
        return runs[-1]

    def resume_unfinished(self) -> Path | None:
        """Continue the fit a stopped studio left unfinished, in the background, from its last checkpoint (as
        ``medadapt fit --resume``; without a checkpoint yet, from its start, in the same folder); a fit of
        every saved case follows when cases were saved after it began. Returns its folder, or None."""
        run = self.unfinished()
        if run is not None:
            self._resume = run
            self.request()
        return run

    def request(self) -> None:
        """Ask for a fit (after a save); runs now, or when the running fit ends."""
        with self._lock:
            self._wanted = True
            self.state = "fitting"  # from now on: the page polls until the fits have ended
            if not self._active:
                self._active = True
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
                if not self._wanted:  # decided under the lock: a request now starts a new worker
                    self._active = False
                    if self.state == "fitting":
                        self.state = "idle"
                    return
                self._wanted = False
            self._fit_once()

    def _labelled(self) -> list:
        return [c for c in self.folder.cases.values() if self.folder.has_label(c)]

    def _fit_once(self) -> None:
        resumed, self._resume = self._resume, None
        if resumed is not None:
            values = RunFolder(resumed).read_fit_config(required=True)
            self._fit(resumed, values, resume=RunFolder(resumed).last_checkpoint.is_file())
            if len(self._labelled()) > int(values.get("shots") or 0):  # saved while the studio was down
                with self._lock:
                    self._wanted = True
            return
        cases = self._labelled()
        if len(cases) < self.min_cases:
            return
        number = max((int(p.name) for p in self.adapters_dir.glob("[0-9]*") if p.name.isdigit()), default=0) + 1
        out = self.adapters_dir / f"{number:03d}"
        listing = self.adapters_dir / f"{number:03d}-cases.csv"
        previous = self.current()
        write_text(listing, _case_csv(cases, self.folder.modality))
        self._fit(out, {
            "data": str(listing), "out": str(out), "model": self.model, "method": "decoder", "prompt": "box",
            "test": 0, "shots": len(cases), "max_steps": self.steps, "progress": False,
            "cache_dir": str(self.folder.state_dir / "cache"), "init_adapter": str(previous) if previous else None,
            "encoder_engine": self.encoder_engine,
        })

    def _fit(self, out: Path, values: dict, *, resume: bool = False) -> None:
        """Run (or, ``resume``, continue) the fit of ``values`` into ``out``; switch to it unless pinned."""
        from medadapt.engine.sam_fit import FitOptions
        from medadapt.pipeline.fit import fit_segment

        started = time.time()
        n = int(values.get("shots") or 0)
        start = values.get("init_adapter")
        self.state, self.running = "fitting", {"adapter": out.name, "cases": n, "started": started,
                                               "from": Path(start).name if start else None, "resumed": resume,
                                               "steps": int(values.get("max_steps") or self.steps)}
        self._running_dir = out
        try:
            result = fit_segment(FitOptions.build(values), resume=resume, report=False).result
            if not self.pinned:
                self.on_adapter(out)
                self.set_current(out)
            self.last = {"adapter": out.name, "cases": n, "seconds": round(time.time() - started, 1),
                         "val_dsc": result.get("best_metric"), "val_cases": len(result.get("val_cases") or []),
                         "resumed": resume, "error": None}
        except Exception as err:  # the studio keeps running with its current adapter; the page shows why
            message = str(err) if isinstance(err, MedadaptError) else f"{type(err).__name__}: {err}"
            self.last = {"adapter": out.name, "cases": n, "seconds": round(time.time() - started, 1),
                         "val_dsc": None, "resumed": resume, "error": message}
        finally:
            self.running, self._running_dir = None, None
            with self._lock:
                self.state = "fitting" if self._wanted else ("failed" if (self.last or {}).get("error") else "idle")

    def status(self) -> dict:
        current = self.current()
        running, run_dir = self.running, self._running_dir
        if running is not None and run_dir is not None:
            running = {**running, **fit_progress(run_dir)}
        return {"state": self.state, "steps": self.steps, "labelled": len(self._labelled()),
                "current": current.name if current else None, "pinned": self.pinned, "running": running,
                "last": self.last, "queued": self._wanted, "adapters": self.adapters()}


def _case_csv(cases, modality: str) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["image", "mask", "modality"])
    for c in cases:
        writer.writerow([str(c.image), str(c.label), "" if modality == "auto" else modality])
    return buf.getvalue()
