"""Reading a study file: YAML in, a fully validated :class:`~pbt.spec.StudySpec` out.

A typo in a study file should cost seconds, not a GPU-hour: unknown fields are refused, every
bound is checked, the algorithm's options are validated by the policy that will use them, and
the trainer's import path is resolved. Errors come back as one :class:`~pbt.errors.SpecError`
listing each bad field by its dotted path and the reason.

This module sits above the models (:mod:`pbt.spec`), the policies and the trainers: it is the
one place that needs all three, so none of them needs another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pbt.controller.policies import validate_options
from pbt.errors import SpecError
from pbt.spec import StudySpec, format_errors
from pbt.trainers.base import load_trainer_class


def parse_spec(data: Any, *, source: str = "study", check_trainer: bool = True) -> StudySpec:
    """Validate raw data (a parsed YAML mapping) into a StudySpec, or raise SpecError.

    ``source`` names the data in messages (a file path, "the stored spec of X"). The algorithm's
    options are validated by its policy and stored back normalised (only the fields that were
    set). ``check_trainer=False`` skips importing the trainer, for readers of a stored study
    that will not train (status, report).
    """
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source} is invalid:\n{format_errors(exc)}") from None
    try:
        options = validate_options(spec)
    except ValidationError as exc:
        raise SpecError(f"{source} is invalid:\n{format_errors(exc, 'algorithm.options.')}") from None
    except SpecError as exc:
        raise SpecError(f"{source} is invalid:\n  {exc}") from None
    spec.algorithm.options = options
    if check_trainer:
        try:
            load_trainer_class(spec.trainer.path)
        except SpecError as exc:
            raise SpecError(f"{source} is invalid:\n  {exc}") from None
    return spec


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None, check_trainer: bool = True) -> StudySpec:
    """Read a YAML study file, apply command-line overrides, validate.

    ``overrides`` maps a top-level field (``"seed"``) or ``"section.field"`` to a value; ``None``
    means "keep the file's". Raises SpecError for a missing file, invalid YAML or any bad field.
    """
    data = read_study_file(path)
    if isinstance(data, dict):
        apply_overrides(data, overrides)
    return parse_spec(data, source=str(path), check_trainer=check_trainer)


def read_study_file(path: str | Path) -> Any:
    """The parsed YAML of a study file, not yet validated; SpecError for a missing file or bad YAML."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise SpecError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> None:
    """Set ``"field"`` or ``"section.field"`` in raw study data, in place; a None value keeps the data's."""
    for key, value in (overrides or {}).items():
        if value is not None:
            section, _, field = key.partition(".")
            if field:
                if not isinstance(data.get(section), dict):
                    data[section] = {}
                data[section][field] = value
            else:
                data[key] = value
