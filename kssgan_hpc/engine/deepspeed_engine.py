"""Engine over DeepSpeed: one DeepSpeed engine per network (G and D each own an optimizer), ZeRO 0..2.

Checkpoints are our own files, not DeepSpeed's checkpoint engine (which loads with
weights_only=False): module weights as safetensors, each rank's optimizer partition as a
tensor file loaded with weights_only=True and DeepSpeed's loss-scaler classes allow-listed.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import socket
from pathlib import Path

import deepspeed
import torch
from safetensors.torch import save_file
from torch import nn

from kssgan_hpc.checkpoints import optimizer_file, optimizer_rank_files, weights_file
from kssgan_hpc.config.train import EngineConfig
from kssgan_hpc.distributed import barrier, choose_device
from kssgan_hpc.engine.base import EngineError, MicroBatchCounter, grad_norm, zero_loss
from kssgan_hpc.weights import CheckpointError, load_weights_into, read_state


def _safe_globals() -> list:
    """The few DeepSpeed classes inside its optimizer state dicts (ZeRO stage enum, loss scalers)."""
    from deepspeed.runtime.fp16 import loss_scaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    names = ("LossScaler", "DynamicLossScaler", "LossScaleConfig", "LossScaleProfile")
    return [ZeroStageEnum, fragment_address, *(getattr(loss_scaler, n) for n in names if hasattr(loss_scaler, n))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


class DeepSpeedEngine:
    def __init__(self, cfg: EngineConfig) -> None:
        cpu = not torch.cuda.is_available()
        if cpu:
            # The shared-memory comm op compiles C++ for minutes on first use; gloo is enough on CPU.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        if "RANK" not in os.environ:  # a plain process, not under torchrun: a group of one (else MPI discovery)
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(_free_port()))
        deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl")
        import torch.distributed as dist

        self.cfg = cfg
        self.precision = cfg.precision
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = choose_device("auto", self.local_rank)
        if not cpu:
            torch.cuda.set_device(self.device)
        self._engines: dict[str, deepspeed.DeepSpeedEngine] = {}
        self._norms: dict[str, float] = {}
        self._micro = MicroBatchCounter(cfg.accumulate)
        self._dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.precision]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _ds_config(self) -> dict:
        config = self._base_config()
        if self.cfg.deepspeed_config:
            path = Path(self.cfg.deepspeed_config)
            try:
                user = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise EngineError(f"{path}: cannot read the DeepSpeed JSON: {err}") from None
            stage = user.get("zero_optimization", {}).get("stage", self.cfg.zero_stage)
            if stage != self.cfg.zero_stage or any(user.get(k, {}).get("enabled") for k in ("fp16", "bf16")
                                                   if k != self.precision):
                raise EngineError(f"{path}: sets ZeRO stage or precision; use engine.zero_stage / engine.precision")
            config = _merge(config, user)
        return config

    def _base_config(self) -> dict:
        return {
            "train_micro_batch_size_per_gpu": 1,  # the loops feed batches themselves; DeepSpeed only checks this
            # DeepSpeed accumulates itself: backward + step every micro-batch, it updates at the boundary.
            "gradient_accumulation_steps": self.cfg.accumulate,
            "zero_optimization": {"stage": self.cfg.zero_stage},
            "bf16": {"enabled": self.precision == "bf16"},
            "fp16": {
                "enabled": self.precision == "fp16",
                "loss_scale": 0,
                "initial_scale_power": int(math.log2(self.cfg.initial_loss_scale)),
                "min_loss_scale": 1,  # the loops stop at engine.min_loss_scale, with a checkpoint
            },
            "gradient_clipping": self.cfg.grad_clip,
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    def prepare(self, name: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self._ds_config())
        self._engines[name] = engine
        return engine

    def model(self, name: str) -> nn.Module:
        return self._engines[name]

    def unwrap(self, name: str) -> nn.Module:
        return self._engines[name].module

    def cast(self, tensor: torch.Tensor) -> torch.Tensor:
        # DeepSpeed casts the module itself to bf16/fp16 (no autocast), so inputs must match.
        return tensor.to(self._dtype) if tensor.is_floating_point() else tensor

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def micro_batch(self, name: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # DeepSpeed defers the reduction to the boundary itself

    def backward(self, name: str, loss: torch.Tensor) -> None:
        self._engines[name].backward(loss)  # DeepSpeed divides by gradient_accumulation_steps

    def zero_backward(self, name: str) -> None:
        self._engines[name].backward(zero_loss(self.unwrap(name)))

    def step(self, name: str, skip: bool = False) -> bool | None:
        engine = self._engines[name]
        boundary = self._micro.advance(name)
        if boundary and skip:
            engine.zero_grad()
            if self.cfg.accumulate == 1:
                return False  # no step() at all: nothing was accumulated, DeepSpeed's counters stay aligned
            # Within a window DeepSpeed must see step() at the boundary; with zeroed gradients the
            # update is the optimizer's momentum only, never a non-finite value.
        if boundary and not self.cfg.zero_stage:
            self._norms[name] = grad_norm(engine.module)
        engine.step()
        if not boundary:
            return None
        if self.cfg.zero_stage:  # ZeRO keeps reduced gradients in its partitions and computes the norm in step()
            self._norms[name] = float(engine.get_global_grad_norm() or 0.0)
        applied = engine.was_step_applied() and not skip
        engine.zero_grad()
        return applied

    def zero_grad(self, name: str) -> None:
        self._engines[name].zero_grad()

    def loss_scale(self, name: str) -> float | None:
        if self.precision != "fp16":
            return None
        return float(self._engines[name].optimizer.cur_scale)

    def grad_norm(self, name: str) -> float:
        return self._norms.get(name, 0.0)

    def save(self, directory: Path) -> None:
        for name, engine in self._engines.items():
            if self.is_main:  # ZeRO 0..2 keep the full module on every rank
                state = {k: v.detach().contiguous() for k, v in engine.module.state_dict().items()}
                save_file(state, weights_file(directory, name))
            # Optimizer state (fp32 master weights under bf16/fp16) is partitioned under ZeRO: one file per rank.
            torch.save(engine.optimizer.state_dict(), optimizer_file(directory, name, self.rank))
        barrier()

    def load(self, directory: Path) -> None:
        for name, engine in self._engines.items():
            load_weights_into(engine.module, weights_file(directory, name))
            paths = optimizer_rank_files(directory, name)
            if len(paths) != self.world_size:
                raise CheckpointError(
                    f"{directory}: optimizer state of {len(paths)} ranks for '{name}', this run has "
                    f"{self.world_size}; resume with the same number of ranks"
                )
            with torch.serialization.safe_globals(_safe_globals()):
                states = [read_state(p) for p in paths]
            optimizer = engine.optimizer
            if "load_from_fp32_weights" in inspect.signature(optimizer.load_state_dict).parameters:
                # ZeRO 1/2 optimizers take every rank's partition and rebuild fp32 master weights from them.
                optimizer.load_state_dict(states, load_from_fp32_weights=True)
            else:  # ZeRO 0: a torch optimizer, or DeepSpeed's unfused bf16/fp16 wrapper of one
                optimizer.load_state_dict(states[self.rank])

    def close(self) -> None:
        barrier()
