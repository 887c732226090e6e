"""The search space: parameter types and the only operations policies need on them.

Four kinds of parameter, as in Vizier: ``int`` and ``float`` (linear or log scale),
``discrete`` (an ordered list of numbers) and ``categorical`` (unordered strings). Every
operation takes an explicit ``numpy.random.Generator`` so policies stay deterministic.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

Value = Union[int, float, str]  # noqa: UP007 - used at runtime by pydantic on 3.10


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mutable: bool = Field(
        default=True,
        description="false: explore never changes it and a child keeps its parent's value (for architecture "
        "choices: weights of one shape cannot be loaded into another); a new member draws it from the prior",
    )

    def sample(self, rng: np.random.Generator) -> Value:
        raise NotImplementedError

    def perturb(self, value: Value, rng: np.random.Generator, factors: tuple[float, float]) -> Value:
        """Explore around ``value``: scale numbers, step to a neighbour, resample categories."""
        raise NotImplementedError

    def to_unit(self, value: Value) -> float:
        """Map a value to [0, 1] (numbers) or its index (categories): for model-based policies."""
        raise NotImplementedError

    def contains(self, value: Any) -> bool:
        raise NotImplementedError


class _Numeric(_Param):
    low: float
    high: float
    scale: Literal["linear", "log"] = "linear"

    @model_validator(mode="after")
    def _check_bounds(self) -> _Numeric:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.scale == "log" and self.low <= 0:
            raise ValueError(f"log scale needs low > 0 (got low={self.low})")
        return self

    def _warp(self, x: float) -> float:
        return math.log(x) if self.scale == "log" else x

    def _unwarp(self, x: float) -> float:
        return math.exp(x) if self.scale == "log" else x

    def from_unit(self, u: float) -> float:
        lo, hi = self._warp(self.low), self._warp(self.high)
        return min(max(self._unwarp(lo + u * (hi - lo)), self.low), self.high)

    def to_unit(self, value: Value) -> float:
        lo, hi = self._warp(self.low), self._warp(self.high)
        return (self._warp(float(value)) - lo) / (hi - lo)

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


class FloatParam(_Numeric):
    type: Literal["float"]

    def sample(self, rng: np.random.Generator) -> float:
        return float(self.from_unit(float(rng.random())))

    def perturb(self, value: Value, rng: np.random.Generator, factors: tuple[float, float]) -> float:
        factor = factors[int(rng.integers(2))]
        return float(min(max(float(value) * factor, self.low), self.high))


class IntParam(_Numeric):
    type: Literal["int"]
    low: int  # type: ignore[assignment]
    high: int  # type: ignore[assignment]

    def sample(self, rng: np.random.Generator) -> int:
        if self.scale == "linear":
            return int(rng.integers(self.low, self.high + 1))
        # Log scale: sample the warped interval widened by half a unit so ends are fair.
        lo, hi = math.log(self.low - 0.5 + 1e-9), math.log(self.high + 0.5)
        return int(min(max(round(math.exp(lo + float(rng.random()) * (hi - lo))), self.low), self.high))

    def perturb(self, value: Value, rng: np.random.Generator, factors: tuple[float, float]) -> int:
        factor = factors[int(rng.integers(2))]
        new = round(int(value) * factor)
        if new == int(value):  # ×1.2 of a small int rounds back to itself: still move one step
            new = int(value) + (1 if factor > 1 else -1)
        return int(min(max(new, self.low), self.high))

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high


class DiscreteParam(_Param):
    type: Literal["discrete"]
    values: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_values(self) -> DiscreteParam:
        if any(b <= a for a, b in zip(self.values, self.values[1:])):
            raise ValueError("values must be strictly increasing")
        return self

    def sample_value(self, index: int) -> Value:
        return self._typed(self.values[index])

    def _typed(self, x: float) -> Value:
        return int(x) if float(x).is_integer() and all(float(v).is_integer() for v in self.values) else float(x)

    def sample(self, rng: np.random.Generator) -> Value:
        return self._typed(self.values[int(rng.integers(len(self.values)))])

    def perturb(self, value: Value, rng: np.random.Generator, factors: tuple[float, float]) -> Value:
        i = self._index(value)
        if len(self.values) == 1:
            return self._typed(self.values[0])
        step = 1 if rng.random() < 0.5 else -1
        j = i + step if 0 <= i + step < len(self.values) else i - step
        return self._typed(self.values[j])

    def _index(self, value: Value) -> int:
        return int(np.argmin([abs(v - float(value)) for v in self.values]))

    def to_unit(self, value: Value) -> float:
        return self._index(value) / max(len(self.values) - 1, 1)

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and any(float(value) == v for v in self.values)


class CategoricalParam(_Param):
    type: Literal["categorical"]
    values: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_values(self) -> CategoricalParam:
        if len(set(self.values)) != len(self.values):
            raise ValueError("values must be unique")
        return self

    def sample(self, rng: np.random.Generator) -> str:
        return self.values[int(rng.integers(len(self.values)))]

    def sample_value(self, index: int) -> str:
        return self.values[index]

    def perturb(self, value: Value, rng: np.random.Generator, factors: tuple[float, float]) -> str:
        return self.sample(rng)  # categories have no neighbours: resample

    def to_unit(self, value: Value) -> float:
        return float(self.values.index(str(value)))

    def contains(self, value: Any) -> bool:
        return value in self.values


Parameter = Annotated[FloatParam | IntParam | DiscreteParam | CategoricalParam, Field(discriminator="type")]
SearchSpace = dict[str, Parameter]


def sample_params(space: SearchSpace, rng: np.random.Generator) -> dict[str, Value]:
    """One draw from the prior, in the study file's parameter order."""
    return {name: p.sample(rng) for name, p in space.items()}
