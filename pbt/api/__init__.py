"""The Python API: run, start and read studies (``import pbt`` re-exports these names).

:mod:`pbt.api.specs` turns a YAML path, a dict or typed objects into a validated study,
:mod:`pbt.api.running` runs it (``run`` blocks, ``start`` returns a :class:`StudyRun`), and
:mod:`pbt.api.study` reads a stored study's results (:class:`Study`). The CLI's ``run``,
``status``, ``stop`` and ``resume`` go through the same functions.
"""

from pbt.api.running import StudyRun, run, start
from pbt.api.specs import study_spec
from pbt.api.study import Study, load_study

__all__ = ["Study", "StudyRun", "load_study", "run", "start", "study_spec"]
