"""The checkpoint layout, in one place, and the manager that saves, finds, restores and prunes checkpoints.

A training run's folder (`out/`):
  checkpoints/step-XXXXXXXX/      one checkpoint, written as `.step-XXXXXXXX.tmp` by every rank and
                                  renamed when all are done; `checkpoints/latest` names the newest
    <model>.safetensors           a prepared model's weights (engine.save; model names below)
    <model>-optimizer.pt          its optimizer state (Accelerate), or one `-rank00000.pt` per rank (DeepSpeed)
    grad-scaler.pt                the fp16 loss scaler (Accelerate)
    extra-<name>.safetensors      loop weights that are not trained by an optimizer (the EMA generator)
    trainer-rank00000.pt, …       step, RNG states and sampler position of each rank
    config.yaml                   the run's resolved config
    complete                      marker: the directory is whole
  selected/                       GAN runs: the EMA generator that passed the release gate's measurement
    ema_g.safetensors, selected.json, selection.jsonl

Engines, loops and loaders ask this module for names: a renamed model breaks here, loudly, not at
release time. Weights load from safetensors and state with torch.load(weights_only=True) only.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import save_file

from kssgan_hpc.config import dump_yaml, from_dict
from kssgan_hpc.distributed import barrier
from kssgan_hpc.errors import RunFailure
from kssgan_hpc.files import atomic_output, atomic_write_json, atomic_write_text
from kssgan_hpc.weights import CheckpointError, read_state, read_weights

log = logging.getLogger(__name__)

SIAMESE, GENERATOR, DISCRIMINATOR = "siamese", "g", "d"
"""The names training prepares its models under (engine.prepare), which are their files' names."""
EMA_GENERATOR = "ema_g"
"""The EMA copy of G: what ships (an extra of GAN checkpoints, and the selected generator)."""
CHECKPOINTS, LATEST, COMPLETE, CONFIG = "checkpoints", "latest", "complete", "config.yaml"
SELECTED = "selected"


def weights_file(directory: Path, name: str) -> Path:
    return directory / f"{name}.safetensors"


def optimizer_file(directory: Path, name: str, rank: int | None = None) -> Path:
    """One file per model (replicated optimizers), or one per rank (`rank`: partitioned ones)."""
    return directory / (f"{name}-optimizer.pt" if rank is None else f"{name}-optimizer-rank{rank:05d}.pt")


def optimizer_rank_files(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f"{name}-optimizer-rank*.pt"))


def scaler_file(directory: Path) -> Path:
    return directory / "grad-scaler.pt"


def extra_file(directory: Path, name: str) -> Path:
    return directory / f"extra-{name}.safetensors"


def trainer_file(directory: Path, rank: int) -> Path:
    return directory / f"trainer-rank{rank:05d}.pt"


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint: the `latest` pointer, else the newest directory with its marker."""
    pointer = checkpoints / LATEST
    if pointer.is_file():
        candidate = checkpoints / pointer.read_text().strip()
        if (candidate / COMPLETE).is_file():
            return candidate
    complete = _complete(checkpoints)
    return complete[-1] if complete else None


def _complete(checkpoints: Path) -> list[Path]:
    return sorted(p for p in checkpoints.glob("step-*") if (p / COMPLETE).is_file())


def checkpoint_with_config(run_dir: str | Path, cls: type, stage: str) -> tuple[Path, Any]:
    """The newest complete checkpoint of a `stage` run and the config it was trained with."""
    path = latest_checkpoint(Path(run_dir) / CHECKPOINTS)
    if path is None:
        label = {"siamese": "Siamese", "gan": "GAN"}.get(stage, stage)
        raise CheckpointError(f"{run_dir}: no complete {label} checkpoint (run `kssgan train {stage}` first)")
    config = path / CONFIG
    try:
        values = yaml.safe_load(config.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CheckpointError(f"{config}: unreadable checkpoint config: {err}") from None
    return path, from_dict(cls, values if isinstance(values, dict) else {"": values}, str(config))


def shipped_generator_file(run_dir: str | Path, checkpoint: Path) -> Path:
    """The EMA generator a GAN run ships: the gate-selected one when training chose one, else the one in
    `checkpoint` (its newest)."""
    selected = weights_file(Path(run_dir) / SELECTED, EMA_GENERATOR)
    return selected if selected.is_file() else extra_file(checkpoint, EMA_GENERATOR)


def save_selected_generator(run_dir: str | Path, state: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
    """Make `state` the run's selected EMA generator, with why (`record`), each file atomically."""
    folder = Path(run_dir) / SELECTED
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output(weights_file(folder, EMA_GENERATOR)) as tmp:
        save_file({name: t.detach().cpu().contiguous() for name, t in state.items()}, tmp)
    atomic_write_json(folder / "selected.json", record)


def logged_step(line: str) -> float:
    """The step of one metrics.jsonl / selection.jsonl line; a line cut short by a kill counts as after
    every step."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def append_selection(run_dir: str | Path, record: dict[str, Any]) -> None:
    """One line of selection.jsonl: the gate's measurement of one checkpoint. Lines of this step or later
    (written by a run that stopped after them and is measuring them again) are replaced, not repeated."""
    folder = Path(run_dir) / SELECTED
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "selection.jsonl"
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    kept = "".join(line for line in lines if logged_step(line) < record["step"])
    atomic_write_text(path, kept + json.dumps(record) + "\n")


class Checkpointable(Protocol):
    """What the manager needs of an engine: it writes and reads its own models' and optimizers' files."""

    rank: int

    @property
    def is_main(self) -> bool: ...

    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...


@dataclass
class Resumed:
    step: int = 0
    sampler: dict[str, int] = field(default_factory=dict)
    extra: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


class CheckpointManager:
    """Saves, finds, restores and prunes the checkpoints of one run (collective where it says so)."""

    def __init__(self, run_dir: Path, engine: Checkpointable, keep: int) -> None:
        self.folder = Path(run_dir) / CHECKPOINTS
        self.engine = engine
        self.keep = keep

    def prepare(self) -> None:
        """Rank 0: create the folder and remove any save a kill cut short."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".step-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)

    def latest(self) -> Path | None:
        return latest_checkpoint(self.folder)

    def save(self, step: int, *, sampler: dict[str, int], config: Any,
             extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
        """Collective. Atomic: a directory is renamed into place only when every rank has written its part."""
        engine = self.engine
        final = self.folder / f"step-{step:08d}"
        tmp = self.folder / f".step-{step:08d}.tmp"
        if engine.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        trainer = {"step": step, "sampler": sampler, "torch_rng": torch.get_rng_state(),
                   "python_rng": random.getstate()}
        if torch.cuda.is_available():
            trainer["cuda_rng"] = torch.cuda.get_rng_state()
        try:
            engine.save(tmp)
            if engine.is_main:
                for name, state in (extra or {}).items():
                    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, extra_file(tmp, name))
                atomic_write_text(tmp / CONFIG, dump_yaml(config))
            torch.save(trainer, trainer_file(tmp, engine.rank))
        except (OSError, RuntimeError, SafetensorError) as err:
            # A full disk surfaces as ENOSPC, as torch's "unexpected pos" or as a SafetensorError, none
            # naming the file: say where, and leave no half checkpoint (the last complete one stays).
            shutil.rmtree(tmp, ignore_errors=True)
            free = shutil.disk_usage(self.folder).free / 2**20
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
            kept = self.latest()
            raise RunFailure(f"{final}: the checkpoint could not be written ({reason}; {free:.1f} MiB free on its "
                             "disk); " + (f"{kept.name} is kept as the last complete one" if kept else
                                          "no checkpoint is complete yet") + ": free space and run again") from None
        barrier()
        if engine.is_main:
            (tmp / COMPLETE).write_text(f"{step}\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            atomic_write_text(self.folder / LATEST, final.name + "\n")
            self.prune()
            log.info("checkpoint %s", final)
        barrier()
        return final

    def prune(self) -> None:
        for old in _complete(self.folder)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def restore(self, path: Path) -> Resumed:
        """Collective: the engine's state, this rank's RNG states, and the step, sampler and extras to go on from."""
        self.engine.load(path)
        state_path = trainer_file(path, self.engine.rank)
        if not state_path.is_file():
            raise CheckpointError(f"{state_path}: missing; resume with the rank count the checkpoint was made with")
        trainer = read_state(state_path)
        torch.set_rng_state(trainer["torch_rng"])
        random.setstate(_as_tuple(trainer["python_rng"]))
        if "cuda_rng" in trainer and torch.cuda.is_available():
            torch.cuda.set_rng_state(trainer["cuda_rng"])
        extra = {p.stem.removeprefix("extra-"): read_weights(p) for p in path.glob("extra-*.safetensors")}
        log.info("resumed from %s (step %d)", path, trainer["step"])
        return Resumed(step=trainer["step"], sampler=trainer["sampler"], extra=extra)


def _as_tuple(value: Any) -> Any:
    """random.getstate() round-trips through torch.save as lists in places; setstate needs tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value
