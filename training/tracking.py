"""A CSV tracker for ``accelerate`` (TensorBoard is built in; a CSV is what a script or a test reads).

One row per logged step, one column per metric; a new metric adds a column (the small file is
rewritten). When a run resumes from step s, rows after s — logged by the interrupted run after its
last checkpoint — are dropped, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from accelerate.tracking import GeneralTracker, on_main_process


class CSVTracker(GeneralTracker):
    name = "csv"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.resume_step = resume_step
        self.columns: list[str] = ["step"]
        self.rows: list[dict[str, object]] = []

    @on_main_process
    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.resume_step is not None and self.path.exists():
            with open(self.path, newline="") as handle:
                reader = csv.DictReader(handle)
                self.columns = list(reader.fieldnames or ["step"])
                self.rows = [row for row in reader if int(row["step"]) <= self.resume_step]
        self._rewrite()

    @property
    def tracker(self):
        return self

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        pass  # the configuration is in the run's config.yaml; a CSV of metrics stays rectangular

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        row = {"step": step, **{k: v for k, v in values.items() if isinstance(v, (int, float))}}
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns.extend(new)
            self._rewrite()
            return
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns).writerow(row)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)

    @on_main_process
    def finish(self) -> None:
        pass


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """The CSV as a list of {column: float} rows (empty cells left out)."""
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]
