"""A stored study as flat tables (CSV, data frames) and as TensorBoard event files.

Columns are the keys of ``pbt status --json``'s trials, flattened the way
``pandas.json_normalize`` flattens them: ``params.h0``, ``timings.train``, ``metadata.exploit``.
Per trial, one row per trial without its ``metrics`` list; per evaluation, one row per entry of
``metrics`` with its ``step``, ``lineage_step`` and ``values.METRIC``, after the trial's columns.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pbt.analysis.study import StoredStudy
from pbt.errors import FatalError
from pbt.lineage import trial_json
from pbt.tensorboard import write_events
from pbt.trial import Trial

Per = Literal["trial", "evaluation"]
#: Columns of an evaluation row that come from the metrics entry, before its ``values.*``.
EVALUATION_KEYS = ("step", "lineage_step")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"params": {"h0": 1}}`` → ``{"params.h0": 1}``; lists are kept as they are."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def trial_rows(trials: Iterable[Trial]) -> list[dict[str, Any]]:
    """One row per trial: its ``status --json`` object flattened, without the ``metrics`` list."""
    rows = []
    for t in trials:
        data = trial_json(t)
        data.pop("metrics", None)
        rows.append(flatten(data))
    return rows


def evaluation_rows(trials: Iterable[Trial]) -> list[dict[str, Any]]:
    """One row per evaluation: the trial's columns, then ``step``, ``lineage_step``, ``values.*``."""
    trials = list(trials)
    rows = []
    for t, row in zip(trials, trial_rows(trials)):
        for m in t.metrics:
            rows.append({**row, "step": m.step, "lineage_step": m.lineage_step,
                         **{f"values.{k}": v for k, v in m.values.items()}})
    return rows


def rows(trials: Sequence[Trial], per: Per = "trial") -> list[dict[str, Any]]:
    if per == "trial":
        return trial_rows(trials)
    if per == "evaluation":
        return evaluation_rows(trials)
    raise ValueError(f"per must be 'trial' or 'evaluation', not {per!r}")


def columns(table: Iterable[dict[str, Any]]) -> list[str]:
    """Every key, in order of first appearance (later trials may add metrics or metadata keys)."""
    return list(dict.fromkeys(k for row in table for k in row))


def write_csv(study: StoredStudy, out: str | Path, per: Per = "trial") -> int:
    """Write the study's trials (or evaluations) as CSV to ``out`` (``-``: stdout); returns the rows.

    Missing values are empty cells; NaN and infinities are written as ``nan``, ``inf``. A text
    cell that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, a tab
    or a carriage return; OWASP's "CSV injection") is written with a leading ``'``: trial
    metadata and errors hold text a trainer chose.
    """
    table = rows(study.trials, per)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(table), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in table)
    if str(out) == "-":
        sys.stdout.write(buf.getvalue())
    else:
        path = Path(out)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(buf.getvalue(), encoding="utf-8")
        except OSError as exc:
            raise FatalError(f"{path}: cannot write the CSV file: {exc.strerror or exc}") from None
    return len(table)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return value


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def write_tensorboard(study: StoredStudy, out_dir: str | Path) -> Path:
    """Write the study's records as TensorBoard events under ``out_dir/STUDY`` (returned).

    One run per trial (``member-003/t000042``): every evaluation's metrics at lineage steps,
    starting from the parent's last point, the hyperparameters as ``hparams/NAME`` scalars and as
    an HParams session; see :mod:`pbt.tensorboard`. Replaces the event files of an earlier
    export of the same study in ``out_dir``. Raises SpecError without the ``tensorboard`` extra,
    FatalError when the folder cannot be written.
    """
    return write_events(study.spec, study.trials, out_dir)
