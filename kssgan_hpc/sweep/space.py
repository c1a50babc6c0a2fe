"""The search space of a sweep file -> a nevergrad parametrization, and a point of it -> overrides."""

from __future__ import annotations

from typing import Any

import nevergrad as ng
import numpy as np

from kssgan_hpc.config.sweep import ParamSpec


def parametrization(space: dict[str, ParamSpec], seed: int) -> ng.p.Dict:
    """One nevergrad parameter per key; the seed fixes every draw the optimizer makes."""
    params: dict[str, ng.p.Parameter] = {}
    for key, spec in space.items():
        if spec.type == "log":
            params[key] = ng.p.Log(lower=spec.low, upper=spec.high)
        elif spec.type == "uniform":
            params[key] = ng.p.Scalar(lower=spec.low, upper=spec.high)
        elif spec.type == "int":
            params[key] = ng.p.Scalar(lower=spec.low, upper=spec.high).set_integer_casting()
        else:
            params[key] = ng.p.Choice(list(spec.values))
    result = ng.p.Dict(**params)
    result.random_state = np.random.RandomState(seed)
    return result


def plain(value: dict[str, Any]) -> dict[str, Any]:
    """A candidate's value with numpy scalars as Python numbers (for JSON, YAML and overrides)."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in value.items()}


def as_overrides(params: dict[str, Any]) -> list[str]:
    return [f"{key}={value}" for key, value in params.items()]
