"""Grid search: the "hand-picked fixed hyperparameters" baseline of the paper's comparison.

Every point of a small grid trains from scratch for an equal share of the budget, with its
hyperparameters fixed for the whole run. Give the grid explicitly (``grid: {lr: [1e-3, 3e-3]}``)
or let it be ``points_per_param`` evenly spaced values per parameter (in log space for log
parameters; every value for discrete and categorical ones).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from pydantic import Field

from pbt.controller.policy import FromScratch, Options
from pbt.space import CategoricalParam, DiscreteParam, IntParam, Value
from pbt.trial import Suggestion, Trial

#: Grid points a study may have: the grid is built in memory, and its size is checked first.
MAX_GRID_POINTS = 1_000_000


class GridOptions(Options):
    grid: dict[str, list[float | int | str]] | None = None
    points_per_param: int = Field(default=3, ge=1, le=MAX_GRID_POINTS)
    repeats: int = Field(default=1, ge=1, description="trials per grid point")
    steps_per_trial: int | None = Field(default=None, gt=0, description="default: total_steps / trials")


class GridSearch(FromScratch):
    Options = GridOptions
    options: GridOptions

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self._check_size()
        axes = {name: self._axis(name) for name in self.space}
        points = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
        self.points = [p for p in points for _ in range(self.options.repeats)]
        if self.budget.max_trials is not None:
            self.points = self.points[: self.budget.max_trials]
        self.steps_per_trial = self.share_steps(len(self.points), self.options.steps_per_trial)

    def _check_size(self) -> None:
        """Refuse a grid too large to build, computing its size before building anything; and an
        explicit grid that names no parameter of the space or gives one no value."""
        for name, values in (self.options.grid or {}).items():
            if name not in self.space:
                raise ValueError(f"grid.{name}: not a parameter of the search space ({', '.join(self.space)})")
            if not values:
                raise ValueError(f"grid.{name}: give at least one value")
        sizes = {}
        for name, param in self.space.items():
            if self.options.grid and name in self.options.grid:
                sizes[name] = len(self.options.grid[name])
            elif isinstance(param, (CategoricalParam, DiscreteParam)):
                sizes[name] = len(param.values)
            else:
                sizes[name] = self.options.points_per_param
        total = math.prod(sizes.values()) * self.options.repeats
        if total > MAX_GRID_POINTS:
            shape = " x ".join(f"{sizes[n]} ({n})" for n in sizes)
            raise ValueError(
                f"points_per_param: the grid has {total:,} points ({shape}, x {self.options.repeats} repeats); "
                f"at most {MAX_GRID_POINTS:,}"
            )

    def _axis(self, name: str) -> list[Value]:
        param = self.space[name]
        if self.options.grid and name in self.options.grid:
            values = self.options.grid[name]
            bad = [v for v in values if not param.contains(v)]
            if bad:
                raise ValueError(f"grid.{name}: values {bad} are outside the parameter's range")
            return list(values)
        if isinstance(param, (CategoricalParam, DiscreteParam)):
            return [param.sample_value(i) for i in range(len(param.values))]
        n = self.options.points_per_param
        units = [0.5] if n == 1 else [i / (n - 1) for i in range(n)]
        values = [param.from_unit(u) for u in units]
        if isinstance(param, IntParam):
            values = sorted({round(v) for v in values})
        return values

    def suggest(self, trials: Sequence[Trial], k: int) -> list[Suggestion]:
        out: list[Suggestion] = []
        room = self.room(trials)
        for point in self.points[len(trials) : len(trials) + k]:
            if not room.take(self.steps_per_trial):
                break
            out.append(Suggestion(params=point, steps=self.steps_per_trial))
        return out
