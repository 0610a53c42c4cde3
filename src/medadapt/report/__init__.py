"""HTML + PNG reports of runs: ``write_report(RUN)`` for one, ``write_comparison(RUNS, OUT)`` side by side."""

from medadapt.report.compare import write_comparison
from medadapt.report.html import write_report
from medadapt.report.run import Run, read_run

__all__ = ["Run", "read_run", "write_comparison", "write_report"]
