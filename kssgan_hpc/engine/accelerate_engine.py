"""Engine over Hugging Face Accelerate: DDP, autocast mixed precision, one GradScaler for fp16.

Accelerate runs fp16 only on a GPU (on CPU it silently trains fp32). On CPU this engine runs fp16
itself with torch's own autocast and GradScaler, which do work there, so the overflow-skip and
loss-scale logic runs, and is tested, on machines without a GPU.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import GradScalerKwargs
from safetensors.torch import save_file
from torch import nn

from kssgan_hpc.checkpoints import optimizer_file, scaler_file, weights_file
from kssgan_hpc.config.train import EngineConfig
from kssgan_hpc.distributed import barrier
from kssgan_hpc.engine.base import MicroBatchCounter, grad_norm, zero_loss
from kssgan_hpc.weights import CheckpointError, load_weights_into, read_state

MIXED = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}


class AccelerateEngine:
    def __init__(self, cfg: EngineConfig) -> None:
        cpu = not torch.cuda.is_available()
        self._cpu_fp16 = cpu and cfg.precision == "fp16"
        # cpu=True is what makes 2 torchrun processes one gloo group on CPU (else each trains alone).
        self.accelerator = Accelerator(
            cpu=cpu, mixed_precision="no" if self._cpu_fp16 else MIXED[cfg.precision],
            kwargs_handlers=[GradScalerKwargs(init_scale=cfg.initial_loss_scale)],
        )
        self._scaler = torch.amp.GradScaler("cpu", init_scale=cfg.initial_loss_scale) if self._cpu_fp16 else None
        self.cfg = cfg
        self.precision = cfg.precision
        self.rank = self.accelerator.process_index
        self.local_rank = self.accelerator.local_process_index
        self.world_size = self.accelerator.num_processes
        self.device = self.accelerator.device
        self._models: dict[str, nn.Module] = {}
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._norms: dict[str, float] = {}
        self._micro = MicroBatchCounter(cfg.accumulate)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare(self, name: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        model, optimizer = self.accelerator.prepare(model, optimizer)
        self._models[name], self._optimizers[name] = model, optimizer
        return model

    def model(self, name: str) -> nn.Module:
        return self._models[name]

    def unwrap(self, name: str) -> nn.Module:
        return self.accelerator.unwrap_model(self._models[name])

    def cast(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor  # autocast chooses per op

    def autocast(self) -> contextlib.AbstractContextManager:
        if self._cpu_fp16:
            return torch.autocast("cpu", dtype=torch.float16)
        return self.accelerator.autocast()

    def micro_batch(self, name: str) -> contextlib.AbstractContextManager:
        # DDP skips its gradient all-reduce inside no_sync; the window's last micro-batch syncs the sum.
        if self._micro.at_boundary(name):
            return contextlib.nullcontext()
        return self.accelerator.no_sync(self._models[name])

    def backward(self, name: str, loss: torch.Tensor) -> None:
        loss = loss / self.cfg.accumulate
        self.accelerator.backward(self._scaler.scale(loss) if self._scaler is not None else loss)

    def zero_backward(self, name: str) -> None:
        self.accelerator.backward(zero_loss(self.unwrap(name)))

    def step(self, name: str, skip: bool = False) -> bool | None:
        if not self._micro.advance(name):
            return None
        model, optimizer = self._models[name], self._optimizers[name]
        if skip:
            optimizer.zero_grad(set_to_none=True)
            return False
        if self._scaler is not None:
            self._scaler.unscale_(optimizer)
        elif self.accelerator.scaler is not None:
            self.accelerator.unscale_gradients(optimizer)
        self._norms[name] = grad_norm(model)
        if self.cfg.grad_clip > 0:  # gradients are unscaled above; DDP has already averaged them
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        if self._scaler is not None:
            # Gradients are all-reduced, so every rank sees the same inf and skips together.
            scale = self._scaler.get_scale()
            self._scaler.step(optimizer)
            self._scaler.update()
            applied = self._scaler.get_scale() >= scale
        else:
            optimizer.step()
            applied = not self.accelerator.optimizer_step_was_skipped
        optimizer.zero_grad(set_to_none=True)
        return applied

    def zero_grad(self, name: str) -> None:
        self._optimizers[name].zero_grad(set_to_none=True)

    def loss_scale(self, name: str) -> float | None:
        scaler = self._scaler or self.accelerator.scaler
        return float(scaler.get_scale()) if scaler is not None else None

    def grad_norm(self, name: str) -> float:
        return self._norms.get(name, 0.0)

    def save(self, directory: Path) -> None:
        # DDP keeps every rank's weights and optimizer state identical: rank 0 writes them.
        if self.is_main:
            for name in self._models:
                state = {k: v.detach().contiguous() for k, v in self.unwrap(name).state_dict().items()}
                save_file(state, weights_file(directory, name))
                torch.save(self._optimizers[name].state_dict(), optimizer_file(directory, name))
            scaler = self._scaler or self.accelerator.scaler
            if scaler is not None:
                torch.save(scaler.state_dict(), scaler_file(directory))
        barrier()

    def load(self, directory: Path) -> None:
        for name in self._models:
            load_weights_into(self.unwrap(name), weights_file(directory, name))
            path = optimizer_file(directory, name)
            state = read_state(path)
            try:
                self._optimizers[name].load_state_dict(state)
            except (KeyError, ValueError, TypeError) as err:
                raise CheckpointError(f"{path}: optimizer state of another model: {err}") from None
        scaler = self._scaler or self.accelerator.scaler
        if scaler is not None and scaler_file(directory).is_file():
            scaler.load_state_dict(read_state(scaler_file(directory)))

    def close(self) -> None:
        self.accelerator.end_training()
