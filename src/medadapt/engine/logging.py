"""Run logs: ``metrics.csv``, TensorBoard events and a rich progress bar.

``metrics.csv`` is long-format (``step,epoch,split,name,value``) so any metric a task returns gets a
row without a schema change. It is appended (rewriting a growing file atomically at every step would
be quadratic); each write is whole lines followed by a flush, so a crash can cut at most the last
line, and :meth:`RunLogger.truncate_after` (called on resume) drops torn lines and rows logged after
the checkpoint so the resumed run does not duplicate them.

Only the main process logs; the trainer passes ``enabled=False`` elsewhere.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medadapt.io.atomic import write_text
from medadapt.run import RunFolder

CSV_FIELDS = ("step", "epoch", "split", "name", "value")


class RunLogger:
    """CSV + TensorBoard + progress for one run directory."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        progress: bool = True,
        resume_step: int | None = None,
    ):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.csv_path = RunFolder(out_dir).metrics_path
        self._csv = None
        self._tb = None
        self._progress: Progress | None = None
        self._bar = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None or not self.csv_path.exists():
            write_text(self.csv_path, ",".join(CSV_FIELDS) + "\n")
        else:
            self.truncate_after(resume_step)
        self._csv = open(self.csv_path, "a", newline="")  # kept open for the whole run
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import, only when used

            tb_dir = RunFolder(out_dir).tensorboard_dir
            if resume_step is None and tb_dir.is_dir():
                for old in tb_dir.glob("events.out.tfevents.*"):  # a fresh run replaces our old events
                    old.unlink()
            # purge_step hides events a crashed run wrote after the checkpoint it resumes from.
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(log_dir=str(tb_dir), purge_step=purge)
        if progress and sys.stderr.isatty():
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True),
            )

    # ------------------------------------------------------------------ metrics
    def log(self, step: int, epoch: int, split: str, values: Mapping[str, float]) -> None:
        """One row per value in the CSV, one scalar per value in TensorBoard (tag ``split/name``)."""
        if not self.enabled or not values:
            return
        buf = io.StringIO()
        writer = csv.writer(buf)
        for name, value in values.items():
            writer.writerow((step, epoch, split, name, _fmt(value)))
        self._csv.write(buf.getvalue())
        self._csv.flush()
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"{split}/{name}", float(value), global_step=step)

    def truncate_after(self, step: int) -> None:
        """Keep the header and the complete rows with ``row.step <= step`` (atomic rewrite)."""
        if not self.csv_path.exists():
            write_text(self.csv_path, ",".join(CSV_FIELDS) + "\n")
            return
        keep = [",".join(CSV_FIELDS)]
        for line in self.csv_path.read_text().splitlines()[1:]:
            fields = next(csv.reader([line]), [])
            if len(fields) == len(CSV_FIELDS) and fields[0].isdigit() and int(fields[0]) <= step:
                keep.append(line)
        write_text(self.csv_path, "\n".join(keep) + "\n")

    # ------------------------------------------------------------------ progress
    def start_progress(self, total: int | None, completed: int, description: str = "train") -> None:
        if self._progress is None:
            return
        self._progress.start()
        self._bar = self._progress.add_task(description, total=total, completed=completed, info="")

    def update_progress(self, advance: int = 1, *, description: str | None = None, info: str | None = None) -> None:
        if self._progress is None or self._bar is None:
            return
        fields = {"advance": advance}
        if description is not None:
            fields["description"] = description
        if info is not None:
            fields["info"] = info
        self._progress.update(self._bar, **fields)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        if self._csv is not None:
            self._csv.close()
            self._csv = None


def _fmt(value: float) -> str:
    value = float(value)
    return repr(value) if math.isfinite(value) else str(value)
