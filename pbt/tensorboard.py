"""Trial records as TensorBoard event files: curves at lineage steps, hyperparameters for HParams.

Layout, under ``DIR/STUDY/``: one TensorBoard *run* per trial, ``member-003/t000042`` (a PBT
member's trials side by side; ``t000042`` for studies without members). In each run:

* every evaluation's metrics (``q``, ``val_bps``, …) as scalars at **lineage steps**, the steps
  the model has trained across copies, so a trial's curve starts where its weights came from:
  its first point is the parent's last evaluation, and a copied member's curve continues its
  parent's;
* each numeric hyperparameter as a scalar ``hparams/NAME`` at the same steps (the schedule);
* the trial's hyperparameters as an HParams session (started when the trial is created, ended
  as a success when it completed or was stopped early, as a failure when it failed), so the
  HParams tab lists every trial with its values and last metrics.

The study's folder itself holds the HParams experiment: the parameters with their domains from
the study file, and the metrics reported.

Written with ``tensorboardX``'s event writer and protocol buffers (the ``tensorboard`` extra:
``pip install 'pbt[tensorboard]'``); view with ``tensorboard --logdir DIR``. Wall times of an
export are the records' (a trial's evaluations spread over its start and finish), of a live log
the moment of writing.

:class:`EventWriter` writes records, whole or as they grow; :class:`LiveTensorBoard` feeds one
from a running controller's record changes on a thread of its own, so the tick never waits on a
disk. Nothing here imports the controller: :mod:`pbt.launch` wires the two.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pbt.errors import FatalError, SpecError
from pbt.spec import StudySpec
from pbt.trial import MetricReport, Trial, TrialStatus

log = logging.getLogger("pbt.tensorboard")

SCHEDULE_PREFIX = "hparams/"
EVENT_GLOB = "events.out.tfevents.*"
# The HParams plugin knows success, failure, running and unknown: an early-stopped trial ended as
# asked, with its metrics, so it counts as a success there.
_END_STATUS = {
    TrialStatus.COMPLETED: "STATUS_SUCCESS",
    TrialStatus.FAILED: "STATUS_FAILURE",
    TrialStatus.STOPPED: "STATUS_SUCCESS",
}


def require() -> None:
    """Raise SpecError now, not mid-study, when the ``tensorboard`` extra is missing (cheap: no import)."""
    if importlib.util.find_spec("tensorboardX") is None:
        raise SpecError(
            "TensorBoard output needs the tensorboard extra: pip install 'pbt[tensorboard]' "
            "(tensorboardX writes the events, tensorboard shows them)"
        )


class _EventFile:
    """One run's event file: tensorboardX's synchronous ``EventsWriter`` (its threaded
    ``SummaryWriter`` costs a thread and an fsync per trial, which a study of short trials feels)."""

    _count = itertools.count()

    def __init__(self, directory: Path) -> None:
        from tensorboardX.event_file_writer import EventsWriter

        directory.mkdir(parents=True, exist_ok=True)
        # A unique suffix: the name's timestamp has whole seconds, and two writers must never share a file.
        suffix = f".{os.getpid()}.{next(self._count)}.pbt"
        self._file = EventsWriter(str(directory / "events"), filename_suffix=suffix)

    def add(self, summary, step: int | None = None, walltime: float | None = None) -> None:
        from tensorboardX.proto.event_pb2 import Event

        event = Event(wall_time=time.time() if walltime is None else walltime, summary=summary)
        if step is not None:
            event.step = step
        self._file.write_event(event)

    def scalar(self, tag: str, value: float, step: int, walltime: float | None) -> None:
        from tensorboardX.proto.summary_pb2 import Summary

        self.add(Summary(value=[Summary.Value(tag=tag, simple_value=value)]), step, walltime)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def run_name(trial: Trial) -> str:
    """The TensorBoard run of a trial: ``member-003/t000042``, or ``t000042`` without a member."""
    return trial.id if trial.member is None else f"member-{trial.member:03d}/{trial.id}"


def has_events(directory: Path) -> bool:
    return directory.is_dir() and any(directory.glob(EVENT_GLOB))


class EventWriter:
    """Writes a study's trial records into ``out_dir/STUDY``, each point once.

    :meth:`write` takes a trial's latest record, as often as it changes: it writes the evaluations
    not yet written (by lineage step), starts the trial's HParams session the first time and ends
    it, closing the trial's file, once the trial is terminal. Parents must be written before
    their children for a child's curve to start at its parent's last point (creation order does
    that). Not thread-safe: one thread writes.
    """

    def __init__(self, spec: StudySpec, out_dir: str | Path, *, record_walltime: bool = False) -> None:
        require()
        self.spec = spec
        self.root = Path(out_dir) / spec.name
        self.record_walltime = record_walltime  # exports: the records' times, not now
        self._open: dict[str, _EventFile] = {}  # trial id -> event file of a trial not yet ended
        self._written: dict[str, int] = {}  # trial id -> last lineage step written
        self._ended: set[str] = set()
        self._last: dict[str, MetricReport] = {}  # last evaluation of trials that may be parents
        self._experiment = has_events(self.root)

    @property
    def directory(self) -> Path:
        return self.root

    def mark_written(self, trial: Trial) -> None:
        """A previous writer wrote ``trial`` as recorded (a resumed study): only add what follows."""
        self._written[trial.id] = trial.metrics[-1].lineage_step if trial.metrics else -1
        if trial.status.terminal:
            self._ended.add(trial.id)
        self._remember(trial)

    def write(self, trial: Trial) -> None:
        if trial.id in self._ended:
            return
        if trial.metrics and not self._experiment:
            self.write_experiment(trial.metrics[-1].values)
        writer = self._writer(trial)
        after = self._written[trial.id]
        for m in trial.metrics:
            if m.lineage_step > after:
                when = self._walltime(trial, m.step)
                self._scalars(writer, trial, m.lineage_step, m.values, when)
                self._written[trial.id] = m.lineage_step
        if trial.status.terminal:
            writer.add(self._session_end(trial), None, self._walltime(trial, None, end=True))
            writer.close()
            del self._open[trial.id]
            self._ended.add(trial.id)
            self._remember(trial)

    def write_experiment(self, metrics: Iterable[str]) -> None:
        """The HParams experiment, in the study's own folder: parameters with domains, and metrics."""
        from tensorboardX.proto.api_pb2 import Experiment, MetricInfo, MetricName

        names = [self.spec.objective.metric, *sorted(set(metrics) - {self.spec.objective.metric})]
        experiment = Experiment(
            name=self.spec.name,
            description=f"pbt study {self.spec.name}: {self.spec.algorithm.name}, "
                        f"objective {self.spec.objective.metric} ({self.spec.objective.mode})",
            time_created_secs=time.time(),
            hparam_infos=[self._hparam_info(name, p) for name, p in self.spec.parameters.items()],
            metric_infos=[MetricInfo(name=MetricName(tag=n), display_name=n) for n in names],
        )
        root = _EventFile(self.root)
        try:
            root.add(_plugin_summary("_hparams_/experiment", experiment=experiment))
        finally:
            root.close()
        self._experiment = True

    def flush(self) -> None:
        """Make what was written to running trials' files visible to TensorBoard."""
        for writer in self._open.values():
            writer.flush()

    def close(self) -> None:
        """Flush and close every trial still open (running trials of a run that ends)."""
        for writer in self._open.values():
            writer.close()
        self._open.clear()

    # Inside ----------------------------------------------------------------------------------

    def _remember(self, trial: Trial) -> None:
        if trial.usable and trial.metrics:
            self._last[trial.id] = trial.metrics[-1]

    def _writer(self, trial: Trial):
        writer = self._open.get(trial.id)
        if writer is not None:
            return writer
        resumed = trial.id in self._written
        writer = _EventFile(self.root / run_name(trial))
        self._open[trial.id] = writer
        if not resumed:
            self._written[trial.id] = -1
            start = trial.started_at or trial.created_at or None
            writer.add(self._session_start(trial), None, start if self.record_walltime else None)
            anchor = self._last.get(trial.parent) if trial.parent else None
            if anchor is not None:  # the curve starts where its weights came from
                when = (trial.started_at or trial.created_at) if self.record_walltime else None
                self._scalars(writer, trial, trial.start_lineage_steps, anchor.values, when or None)
                self._written[trial.id] = trial.start_lineage_steps
        return writer

    def _scalars(self, writer: _EventFile, trial: Trial, step: int, values: dict[str, float],
                 when: float | None) -> None:
        for name, value in values.items():
            writer.scalar(name, float(value), step, when)
        for name, value in trial.params.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.scalar(SCHEDULE_PREFIX + name, float(value), step, when)

    def _walltime(self, trial: Trial, step: int | None, end: bool = False) -> float | None:
        """When an evaluation happened, as well as the records tell (exports); None: now."""
        if not self.record_walltime:
            return None
        start, finish = trial.started_at or trial.created_at, trial.finished_at
        if end or step is None:
            return finish or start or None
        if start and finish and trial.steps_done:
            return start + (finish - start) * min(1.0, step / trial.steps_done)
        return start or None

    def _session_start(self, trial: Trial):
        from tensorboardX.proto.plugin_hparams_pb2 import SessionStartInfo

        info = SessionStartInfo(group_name=trial.id, start_time_secs=trial.started_at or trial.created_at or 0.0)
        for name, value in trial.params.items():
            if isinstance(value, str):
                info.hparams[name].string_value = value
            elif isinstance(value, bool):
                info.hparams[name].bool_value = value
            else:
                info.hparams[name].number_value = float(value)
        return _plugin_summary("_hparams_/session_start_info", session_start_info=info)

    def _session_end(self, trial: Trial):
        from tensorboardX.proto.api_pb2 import Status
        from tensorboardX.proto.plugin_hparams_pb2 import SessionEndInfo

        info = SessionEndInfo(status=Status.Value(_END_STATUS[trial.status]),
                              end_time_secs=trial.finished_at or time.time())
        return _plugin_summary("_hparams_/session_end_info", session_end_info=info)

    @staticmethod
    def _hparam_info(name: str, p) -> Any:
        from google.protobuf.struct_pb2 import ListValue
        from tensorboardX.proto.api_pb2 import DataType, HParamInfo, Interval

        if p.type == "categorical":
            return HParamInfo(name=name, type=DataType.Value("DATA_TYPE_STRING"),
                              domain_discrete=ListValue(values=[_string_value(v) for v in p.values]))
        if p.type == "discrete":
            return HParamInfo(name=name, type=DataType.Value("DATA_TYPE_FLOAT64"),
                              domain_discrete=ListValue(values=[_number_value(v) for v in p.values]))
        return HParamInfo(name=name, type=DataType.Value("DATA_TYPE_FLOAT64"),
                          domain_interval=Interval(min_value=float(p.low), max_value=float(p.high)))


def _string_value(v: str):
    from google.protobuf.struct_pb2 import Value

    return Value(string_value=v)


def _number_value(v: float):
    from google.protobuf.struct_pb2 import Value

    return Value(number_value=float(v))


def _plugin_summary(tag: str, **content):
    """A summary value carrying HParams plugin data, as the plugin reads it."""
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

    data = HParamsPluginData(version=0, **content).SerializeToString()
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=data))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def write_events(spec: StudySpec, trials: Sequence[Trial], out_dir: str | Path) -> Path:
    """Write a whole study's records as event files under ``out_dir/STUDY`` (returned).

    Event files already in that folder are removed first (they would be read as duplicate
    points), so writing again replaces an earlier export.
    """
    root = Path(out_dir) / spec.name
    writer = EventWriter(spec, out_dir, record_walltime=True)
    try:
        if root.is_dir():
            for old in root.rglob(EVENT_GLOB):
                old.unlink()
        metrics = {k for t in trials for m in t.metrics for k in m.values}
        if metrics:
            writer.write_experiment(metrics)
        for trial in sorted(trials, key=lambda t: t.number):
            writer.write(trial)
    except OSError as exc:
        raise FatalError(f"{root}: cannot write TensorBoard events: {exc.strerror or exc}") from None
    finally:
        writer.close()
    return writer.directory


class LiveTensorBoard:
    """Writes a running study's records as they change, on its own thread, every ``interval`` seconds.

    :meth:`changed` is the controller's record listener (``(old, new)``): it only keeps the
    newest record per trial, so the tick pays a dictionary update. ``initial`` returns the
    records a resumed study already had: trials a previous run already wrote are continued, the
    others written whole. A write that fails (disk full, a folder not writable) is logged once
    and turns the log off; the study goes on.
    """

    def __init__(
        self,
        spec: StudySpec,
        out_dir: str | Path,
        *,
        initial: Callable[[], Sequence[Trial]] | None = None,
        interval: float = 1.0,
    ) -> None:
        self.writer = EventWriter(spec, out_dir)  # fails now, not in the thread, without tensorboardX
        # (tensorboardX itself, which imports torch when present, is imported by the thread)
        self.initial = initial
        self.interval = interval
        self.failed: str | None = None
        self._pending: dict[str, Trial] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pbt-tensorboard", daemon=True)

    @property
    def directory(self) -> Path:
        return self.writer.directory

    def changed(self, old: Trial | None, new: Trial) -> None:
        with self._lock:
            self._pending[new.id] = new

    def start(self) -> LiveTensorBoard:
        self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Write what is pending, close the files, stop the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        self._guard(self._backfill)
        while not self._stop.wait(self.interval):
            self._guard(self._drain)
        self._guard(self._drain)
        self._guard(self.writer.close)

    def _guard(self, step: Callable[[], None]) -> None:
        if self.failed:
            return
        try:
            step()
        except Exception as exc:  # never let a log end a study
            self.failed = f"{type(exc).__name__}: {exc}"
            log.warning("TensorBoard log in %s stopped: %s", self.writer.directory, self.failed)

    def _backfill(self) -> None:
        for trial in sorted(self.initial() if self.initial else (), key=lambda t: t.number):
            if has_events(self.writer.directory / run_name(trial)):
                self.writer.mark_written(trial)
            else:
                self.writer.write(trial)

    def _drain(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, {}
        for trial in sorted(batch.values(), key=lambda t: t.number):
            self.writer.write(trial)
        if batch:
            self.writer.flush()
