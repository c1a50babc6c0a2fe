"""Reading weight and state files, in one place: safetensors for weights, torch.load(weights_only=True)
for optimizer and trainer state (tensors and plain containers; no code runs). Every failure is a
CheckpointError naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from kssgan_hpc.errors import InputError


class CheckpointError(InputError):
    """A checkpoint or weight file is missing, truncated, of another format or of another model."""


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file as {name: tensor} on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file is missing")
    try:
        return load_file(path)
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or altered?): {err}") from None


def read_state(path: str | Path) -> Any:
    """An optimizer/trainer state file written by torch.save, loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: state file is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for anything but tensors/containers, RuntimeError if truncated
        raise CheckpointError(f"{path}: not a readable state file (truncated, altered, or holds code "
                              f"weights_only refuses): {str(err).splitlines()[0]}") from None


def load_weights_into(module: torch.nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Load `path` (or its already read `state`) into `module`; a file of another model is an error."""
    state = read_weights(path) if state is None else state
    try:
        module.load_state_dict(state)
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path}: weights of another model or version: {str(err).splitlines()[0]}") from None
