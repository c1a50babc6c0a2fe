"""The engine interface the training loops are written against; one implementation per backend.

A loop prepares each (model, optimizer) pair under a name ("g", "d", "siamese"), then per micro-batch:
    with engine.micro_batch("g"):
        with engine.autocast(): loss = ...(engine.model("g")(engine.cast(x)))
        engine.backward("g", loss)
    applied = engine.step("g")   # None until the last micro-batch of an accumulation window
Only engine/accelerate_engine.py and engine/deepspeed_engine.py import their backend.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from kssgan_hpc.config.train import EngineConfig
from kssgan_hpc.distributed import apply_distributed_env
from kssgan_hpc.errors import InputError


class EngineError(InputError):
    """The engine cannot run as configured (e.g. fp16 without a GPU); says what to change."""


class Engine(Protocol):
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    precision: str

    @property
    def is_main(self) -> bool: ...

    def prepare(self, name: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        """Wrap a model and its optimizer for distributed, mixed-precision training; returns the model to call."""

    def model(self, name: str) -> nn.Module:
        """The wrapped model (its forward synchronises gradients across ranks)."""

    def unwrap(self, name: str) -> nn.Module:
        """The plain module: for frozen use (D in G's step), EMA copies and state dicts."""

    def cast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Inputs in the dtype the prepared models expect."""

    def autocast(self) -> contextlib.AbstractContextManager: ...

    def micro_batch(self, name: str) -> contextlib.AbstractContextManager:
        """Wraps one micro-batch's forward and backward (no gradient sync inside an accumulation window)."""

    def backward(self, name: str, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's loss (averaged over the accumulation window by the engine)."""

    def zero_backward(self, name: str) -> None:
        """A backward that adds nothing: keeps every rank's collectives in step when a loss was not finite."""

    def step(self, name: str, skip: bool = False) -> bool | None:
        """Per micro-batch. None inside an accumulation window; at its end clip, step and zero the
        gradients and return True, or False when the update was skipped: `skip` (no finite loss in
        the window) or an fp16 overflow."""

    def zero_grad(self, name: str) -> None: ...

    def loss_scale(self, name: str) -> float | None:
        """Current fp16 loss scale, None without one."""

    def grad_norm(self, name: str) -> float:
        """Norm of the last step's gradients (before clipping)."""

    def save(self, directory: Path) -> None:
        """Collective: write every prepared model, optimizer and scaler state into `directory`."""

    def load(self, directory: Path) -> None:
        """Collective: restore what `save` wrote."""

    def close(self) -> None: ...


class MicroBatchCounter:
    """Where each model is within its accumulation window."""

    def __init__(self, accumulate: int) -> None:
        self.accumulate = accumulate
        self._count: dict[str, int] = {}

    def at_boundary(self, name: str) -> bool:
        """True when the current micro-batch of `name` is the last of its window."""
        return (self._count.get(name, 0) + 1) % self.accumulate == 0

    def advance(self, name: str) -> bool:
        """Count one micro-batch; True when it closed a window."""
        boundary = self.at_boundary(name)
        self._count[name] = self._count.get(name, 0) + 1
        return boundary


def zero_loss(module: nn.Module) -> torch.Tensor:
    """0 * every trainable parameter: a backward through it gives zero gradients but touches them all."""
    return torch.stack([p.reshape(-1)[0].float() for p in module.parameters() if p.requires_grad]).sum() * 0.0


def grad_norm(module: nn.Module) -> float:
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def build_engine(cfg: EngineConfig) -> Engine:
    """The configured backend; fails early, with the fix, where a precision can't run here."""
    if cfg.precision == "fp16" and cfg.backend == "deepspeed" and not torch.cuda.is_available():
        raise EngineError(
            "engine.precision=fp16 with engine.backend=deepspeed needs a CUDA GPU (DeepSpeed refuses fp16 "
            "on CPU); use engine.backend=accelerate, or engine.precision=bf16 or fp32, on CPU"
        )
    # Under srun without torchrun, export the Slurm task's rank and master as torchrun would.
    apply_distributed_env()
    if cfg.backend == "deepspeed":
        from kssgan_hpc.engine.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(cfg)
    from kssgan_hpc.engine.accelerate_engine import AccelerateEngine

    return AccelerateEngine(cfg)
