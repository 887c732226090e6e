"""Training replay: re-run a trial's whole hyperparameter schedule from scratch, in one process.

PBT's result is a model *and* a schedule (Jaderberg et al. 2017, section 4: "training replay").
Replaying the schedule of the best trial on one trainer answers two questions: is the result
reproducible without the population (and without the luck of which member got copied), and does
the schedule transfer to a longer run (``steps_scale`` / ``extra_steps``) or more data (trainer
config overrides)?

The replay drives the trainer exactly as the workers did, so that it is a faithful re-run and not
a re-implementation: for each trial of the lineage, ``setup(params, seed=trial_seed(study seed,
trial number))`` — the root's seed initialises the model, later seeds only matter for whatever
state a trainer does not checkpoint — then, after the first segment, ``load`` of the state that
``save`` wrote at the end of the previous segment (through a temporary directory: the protocol
has no "set hyperparameters" call, and this is precisely a warm start), then ``train`` in the
same chunks as the original (``execution.checkpoint_every``) with the same intermediate
evaluations, and a final ``evaluate`` — through the workers' own loop,
:class:`~pbt.trainers.driver.TrainerDriver`. With no scaling, a deterministic trainer (the toy one)
reproduces the original objective bit for bit.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pbt.errors import FatalError, NotFoundError
from pbt.lineage import best_trial, lineage
from pbt.space import Value
from pbt.spec import StudySpec
from pbt.trainers.base import load_trainer_class
from pbt.trainers.driver import TrainerDriver
from pbt.trial import Trial, trial_seed


@dataclass
class ReplaySegment:
    """One trial of the lineage as replayed (``trial`` is None for ``extra_steps``)."""

    trial: str | None
    params: dict[str, Value]
    exploit: bool
    seed: int | None
    original_start: int | None  # lineage steps of the original segment
    original_end: int | None
    start: int  # lineage steps of the replay (differ from the original when scaled)
    end: int
    original_objective: float | None
    objective: float | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)  # every replay evaluation in the segment
    seconds: float = 0.0


@dataclass
class ReplayResult:
    study: str
    trial: str
    metric: str
    mode: str
    steps_scale: float
    extra_steps: int
    trainer_config: dict[str, Any]
    segments: list[ReplaySegment]
    original_objective: float
    original_steps: int
    objective: float | None = None
    steps: int = 0
    seconds: float = 0.0
    started_at: float = 0.0
    location: str | None = None  # where the record was saved
    checkpoint: str | None = None  # where the final state was saved, if asked

    @property
    def faithful(self) -> bool:
        """Same steps as the original: the objectives should agree (exactly, for a deterministic trainer)."""
        return self.steps_scale == 1.0 and self.extra_steps == 0

    @property
    def difference(self) -> float | None:
        return None if self.objective is None else self.objective - self.original_objective

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["faithful"] = self.faithful
        data["difference"] = self.difference
        data["exact"] = self.faithful and self.objective == self.original_objective
        return data


def choose_trial(spec: StudySpec, trials: Sequence[Trial], trial_id: str | None) -> Trial:
    """The trial to replay: ``trial_id``, else the study's best; it must have completed."""
    if trial_id is None:
        best = best_trial(trials, spec.objective)
        if best is None:
            raise NotFoundError(f"study {spec.name} has no completed trial to replay yet")
        return best
    found = next((t for t in trials if t.id == trial_id), None)
    if found is None:
        raise NotFoundError(f"study {spec.name} has no trial {trial_id!r} (trial ids look like t000042)")
    if not found.usable:
        raise FatalError(
            f"trial {trial_id} is {found.status.value}"
            + ("" if found.objective is None else f" with objective {found.objective}")
            + "; only a completed trial has a schedule and an objective to compare with"
        )
    return found


def scaled(steps: int, scale: float) -> int:
    return max(1, round(steps * scale))


def replay(
    spec: StudySpec,
    trials: Sequence[Trial],
    trial_id: str | None = None,
    *,
    steps_scale: float = 1.0,
    extra_steps: int = 0,
    trainer_config: Mapping[str, Any] | None = None,
    trainer: Any = None,
    checkpoint_dir: Path | None = None,
    on_segment: Callable[[ReplaySegment], None] | None = None,
) -> ReplayResult:
    """Replay the schedule of ``trial_id`` (default: the best trial); see the module docstring.

    ``trainer``: an already constructed trainer to drive (tests pass an instrumented one);
    default: the study's trainer class built with its config updated by ``trainer_config``.
    ``checkpoint_dir``: if given, the final state is saved there with the trainer's ``save``.
    """
    if not steps_scale > 0 or not math.isfinite(steps_scale):
        raise FatalError(f"steps scale must be a positive number, got {steps_scale}")
    if extra_steps < 0:
        raise FatalError(f"extra steps must be >= 0, got {extra_steps}")
    target = choose_trial(spec, trials, trial_id)
    chain = lineage(trials, target)
    config = {**spec.trainer.config, **dict(trainer_config or {})}
    if trainer is None:
        trainer = load_trainer_class(spec.trainer.path)(config)
    result = ReplayResult(
        study=spec.name, trial=target.id, metric=spec.objective.metric, mode=spec.objective.mode,
        steps_scale=steps_scale, extra_steps=extra_steps, trainer_config=dict(trainer_config or {}),
        segments=[], original_objective=float(target.objective),  # type: ignore[arg-type]
        original_steps=target.lineage_steps, started_at=time.time(),
    )
    steps = 0  # lineage steps of the replay so far
    workdir = Path(tempfile.mkdtemp(prefix=f"pbt-replay-{target.id}-"))
    try:
        state: Path | None = None
        for i, t in enumerate(chain):
            seg = ReplaySegment(
                trial=t.id, params=dict(t.params), exploit=bool(t.metadata.get("exploit")),
                seed=trial_seed(spec.seed, t.number), original_start=t.start_lineage_steps,
                original_end=t.lineage_steps, start=steps, end=steps, original_objective=t.objective,
            )
            t0 = time.perf_counter()
            trainer.setup(seg.params, seed=seg.seed)
            if state is not None:
                trainer.load(state)  # a warm start from the previous segment's final state
                shutil.rmtree(state, ignore_errors=True)  # one state on disk at a time, whatever the lineage's length
            steps = _train(trainer, spec, seg, scaled(t.steps_done, steps_scale))
            if i < len(chain) - 1:
                state = workdir / f"segment-{i}"
                state.mkdir()
                trainer.save(state)
            seg.seconds = time.perf_counter() - t0
            result.segments.append(seg)
            if on_segment:
                on_segment(seg)
        if extra_steps:
            last = result.segments[-1]
            seg = ReplaySegment(
                trial=None, params=dict(last.params), exploit=False, seed=None, original_start=None,
                original_end=None, start=steps, end=steps, original_objective=None,
            )
            t0 = time.perf_counter()
            steps = _train(trainer, spec, seg, extra_steps)  # same trainer, same hyperparameters: just longer
            seg.seconds = time.perf_counter() - t0
            result.segments.append(seg)
            if on_segment:
                on_segment(seg)
        if checkpoint_dir is not None:
            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
            trainer.save(Path(checkpoint_dir))
    finally:
        close = getattr(trainer, "close", None)
        if callable(close):
            close()  # a function trainer's loop ends here
        shutil.rmtree(workdir, ignore_errors=True)
    result.objective = result.segments[-1].objective
    result.steps = steps
    result.seconds = time.time() - result.started_at
    return result


def _train(trainer: Any, spec: StudySpec, seg: ReplaySegment, steps: int) -> int:
    """Train ``steps`` more as a worker would (same chunks, same evaluations) into ``seg``; return its end."""
    driver = TrainerDriver(
        trainer,
        metric=spec.objective.metric,
        checkpoint_every=spec.execution.checkpoint_every,
        evaluate_every_checkpoint=spec.execution.evaluate_every_checkpoint,
        lineage_start=seg.start,
    )
    seg.objective = driver.run(steps)
    seg.metrics = [m.model_dump() for m in driver.metrics]
    seg.end = driver.lineage_step
    return seg.end


def save_replay(
    result: ReplayResult, storage: str | None, out: Path | None = None, checkpoint_dir: Path | None = None
) -> ReplayResult:
    """Keep the record (and the final state, if saved) in ``out`` or under the study in its storage.

    In storage it lands at ``<study>/replays/<trial>-<UTC time>/``: beside the study, out of the
    controller's way (garbage collection only touches ``<study>/checkpoints/<trial>``), and found
    again by anyone who can read the study.
    """
    import json

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(result.started_at))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if checkpoint_dir is not None and Path(checkpoint_dir).resolve() != (out / "checkpoint").resolve():
            shutil.copytree(checkpoint_dir, out / "checkpoint", dirs_exist_ok=True)
            result.checkpoint = str(out / "checkpoint")
        elif checkpoint_dir is not None:
            result.checkpoint = str(out / "checkpoint")
        result.location = str(out / "replay.json")
        (out / "replay.json").write_text(json.dumps(result.to_json(), indent=1))
        return result
    if storage is None:
        raise FatalError("no storage and no output directory to save the replay in")
    from pbt.storage import open_object_store
    from pbt.storage.checkpoints import CheckpointStore
    from pbt.storage.keys import join

    objects = open_object_store(storage)
    prefix = join(result.study, "replays", f"{result.trial}-{stamp}")
    if checkpoint_dir is not None:
        name = join(prefix, "checkpoint")
        CheckpointStore(objects).save(name, Path(checkpoint_dir), meta={"replay_of": result.trial})
        result.checkpoint = objects.url(name)
    key = join(prefix, "replay.json")
    result.location = objects.url(key)
    objects.put_bytes(key, json.dumps(result.to_json(), indent=1).encode())
    return result
