"""Reading a study file: YAML in, a fully validated :class:`~pbt.spec.StudySpec` out.

A typo in a study file should cost seconds, not a GPU-hour: unknown fields are refused, every
bound is checked, types are strict (no ``true`` for a number, no infinite bound), the
algorithm's options are validated by the policy that will use them, the trainer's import path is
resolved, and the policy is asked for its first suggestions, so that a study that cannot start
(a budget smaller than one trial, a grid too large to build) fails here, before anything is
written. Errors come back as one :class:`~pbt.errors.SpecError` listing each bad field by its
dotted path and the reason.

The file itself is read defensively: at most :data:`MAX_FILE_BYTES`, UTF-8 only (an error gives
the offset of the first bad byte), no duplicate keys, and at most :data:`MAX_NODES` values once
YAML anchors and aliases are expanded — counted on the node graph, before anything is built, so
a few hundred bytes of "billion laughs" cannot take the machine's memory.

This module sits above the models (:mod:`pbt.spec`), the policies and the trainers: it is the
one place that needs all three, so none of them needs another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pbt.controller.policies import make_policy, validate_options
from pbt.controller.policy import NEW_STUDY_CHECKS
from pbt.errors import PbtError, SpecError
from pbt.spec import StudySpec, format_errors
from pbt.trainers.base import load_trainer_class


def parse_spec(data: Any, *, source: str = "study", check_trainer: bool = True, stored: bool = False) -> StudySpec:
    """Validate raw data (a parsed YAML mapping) into a StudySpec, or raise SpecError.

    ``source`` names the data in messages (a file path, "the stored spec of X"). The algorithm's
    options are validated by its policy and stored back normalised (only the fields that were
    set). ``check_trainer=False`` skips importing the trainer and what the policy imports (an
    explore hook, scikit-learn for PB2), for readers of a stored study that will not train
    (status, report). ``stored=True`` (implied by ``check_trainer=False``) reads a study's stored
    spec back: checks that only refuse what a new study would silently ignore are skipped, so an
    existing study is never locked out of its records (:data:`~pbt.controller.policy.NEW_STUDY_CHECKS`).
    """
    token = NEW_STUDY_CHECKS.set(check_trainer and not stored)
    try:
        return _parse_spec(data, source, check_trainer)
    finally:
        NEW_STUDY_CHECKS.reset(token)


def _parse_spec(data: Any, source: str, check_trainer: bool) -> StudySpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source} is invalid:\n{format_errors(exc)}") from None
    try:
        options = validate_options(spec, check_imports=check_trainer)
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
        _first_suggestion(spec, source)
    return spec


def _first_suggestion(spec: StudySpec, source: str) -> None:
    """Ask the policy what a new study would start with: a study that cannot start fails here.

    Policies are pure functions of the trial list (:mod:`pbt.controller.policy`), so asking
    with no trials is exactly what the controller's first tick will ask.
    """
    try:
        first = make_policy(spec).suggest([], spec.execution.parallelism)
    except (ValueError, TypeError, ArithmeticError, PbtError) as exc:
        raise SpecError(f"{source} is invalid:\n  algorithm: the first suggestion fails: {exc}") from None
    if not first:
        budget = ", ".join(f"budget.{k} = {v}" for k, v in spec.budget.model_dump().items() if v is not None)
        raise SpecError(
            f"{source} is invalid:\n  budget: {budget} is smaller than one trial of algorithm "
            f"{spec.algorithm.name!r} (options {spec.algorithm.options}): nothing would run"
        )


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
    return read_yaml(Path(path))


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


MAX_FILE_BYTES = 1 << 20  # a study file is a page of YAML, not a data set
MAX_NODES = 100_000  # YAML values once anchors and aliases are expanded


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys (YAML says they are an error; PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *defaults" then overriding keys is what merge keys are for
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: PyYAML's own error says so
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first at line {seen[key].line + 1})", key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Parse a study file under the limits in the module docstring; raises SpecError."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except (FileNotFoundError, IsADirectoryError):
        raise SpecError(f"{path}: no such file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError(f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB; a study file is a page of YAML")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    loader = _StrictLoader(text)
    loader.name = str(path)  # error marks say "in <path>, line N"
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # a scalar YAML cannot build: 5,000 digits, 2024-13-45
        raise SpecError(f"{path}: a value cannot be read: {str(exc)[:200]}") from None
    finally:
        loader.dispose()


def _check_expanded_size(root: yaml.Node, path: Path) -> None:
    """Count the values the document expands to, without expanding it (an alias is a shared node)."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if children_done:
            in_progress.discard(key)
            sizes[key] = min(1 + sum(sizes[id(c)] for c in children), MAX_NODES + 1)
            continue
        if key in in_progress:
            raise SpecError(f"{path}: a YAML alias refers to a value that contains it (a recursive structure)")
        in_progress.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in in_progress:
                raise SpecError(f"{path}: a YAML alias refers to a value that contains it (a recursive structure)")
            stack.append((child, False))
    if sizes[id(root)] > MAX_NODES:
        raise SpecError(
            f"{path}: expands to more than {MAX_NODES:,} values once YAML anchors and aliases (&a / *a) "
            "are substituted; write the values out, or put large data in a file the trainer reads"
        )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []
