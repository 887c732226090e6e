"""The import path of a Python object: how a trainer given as an object reaches other processes.

Workers never receive code, only a study's JSON (DESIGN.md, "Trust model"): a trainer passed to
``pbt.run`` as a class or a function travels as ``"package.module:QualName"`` and every process
imports it from there. So the object must be importable by that path: defined at module level
in a module the workers can import.

A script run as ``python train.py`` defines its objects in ``__main__``, a name that means
something else in every other process. Its path uses the script's module name (``train``)
instead, and ``sys.modules`` gets that name as an alias of ``__main__``, so importing the path in
this process finds the same objects rather than running the script a second time. Embedded
workers import the script by that name (with the same ``sys.path``), which runs its top level
without its ``if __name__ == "__main__":`` block, as multiprocessing does. Objects from a
notebook or an interactive session have no file to import: they are refused with a message
saying where to put them.

The other direction, a path back to its object, is :func:`import_object`: the one way a study
file's import paths (a trainer, an explore hook) are resolved, with errors that name the field.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from pbt.errors import SpecError


def import_object(path: str, field: str, example: str = "package.module:name") -> Any:
    """The object ``"package.module:QualName"`` names; SpecError naming ``field``, which half failed and why."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise SpecError(f"{field}: {path!r} must look like {example!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the user's module raises on import
        raise SpecError(f"{field}: cannot import module {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SpecError(f"{field}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


def import_path(obj: Any) -> str:
    """``"package.module:QualName"`` of a module-level class or function; ValueError says why not."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname:
        raise ValueError(f"{obj!r} has no module and name to import it by; pass a class or a function")
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(
            f"{qualname} is defined inside a function or is a lambda: workers import trainers by path, "
            "so define it at the top level of a module"
        )
    if module == "__main__":
        module = _main_module_name()
    return f"{module}:{qualname}"


def _main_module_name() -> str:
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":  # python -m package.module
        return spec.name
    file = getattr(main, "__file__", None)
    if not file:
        raise ValueError(
            "the trainer is defined in a notebook or an interactive session, which other processes "
            "cannot import: put it in a .py file beside the notebook and import it from there "
            "(from mytrainer import train)"
        )
    path = Path(file).resolve()
    name = path.stem
    on_path = any(Path(p or os.getcwd()).resolve() == path.parent for p in sys.path)
    if not name.isidentifier() or not on_path:
        raise ValueError(
            f"the trainer is defined in the script {file}, which cannot be imported by name "
            f"({'its folder is not on sys.path' if name.isidentifier() else 'not a valid module name'}): "
            "put it in an importable module"
        )
    existing = sys.modules.get(name)
    if existing is None:
        sys.modules[name] = main  # importing the path here finds this script, not a second copy of it
    elif existing is not main and Path(getattr(existing, "__file__", "") or "").resolve() != path:
        raise ValueError(
            f"the script {file} defines the trainer, but the module name {name!r} is already another "
            "module; rename the script"
        )
    return name
