"""What every training loop shares: the run folder, engine, metrics, TensorBoard, checkpoints, signals.

Checkpoint layout (`out/checkpoints/step-XXXXXXXX/`, written as `.step-XXXXXXXX.tmp` and renamed
when every rank is done; `out/checkpoints/latest` is written last):
  <model>.safetensors, <model>-optimizer*.pt   the engine's state (engine.save)
  extra-<name>.safetensors                     loop weights such as the EMA generator
  trainer-rank00000.pt, …                      step, RNG states and sampler position of each rank
  complete                                     marker: the directory is whole
"""

from __future__ import annotations

import json
import logging
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file
from torch.utils.tensorboard import SummaryWriter

from kssgan_hpc.config import dump_yaml, from_dict
from kssgan_hpc.config.core import ConfigError
from kssgan_hpc.config.train import LoopConfig, ModelConfig
from kssgan_hpc.data.shards import ShardError, atomic_write_text, verify_dataset
from kssgan_hpc.engine.base import (
    Engine,
    all_reduce,
    barrier,
    build_engine,
    replicas_identical,
)
from kssgan_hpc.folders import claim_folder
from kssgan_hpc.logs import setup_logging
from kssgan_hpc.weights import CheckpointError, read_state, read_weights

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75
"""Exit code after a stop signal: the checkpoint is written, requeue and rerun with resume=auto."""
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
"""Checkpoint and stop at the next step boundary. USR2 is what submitit asks Slurm to send before a
time limit (`--signal=USR2@delay`); USR1 and TERM what sbatch scripts and preemption send."""
HASHED_NAME = "hashed-shards.json"
"""In the run folder: the dataset's shards this run hashed, with their files' identities (see
shards.verify_dataset), so a requeued run does not hash an unchanged 600 GB again."""
EXIT_DIVERGED = 65
"""Exit code when the fp16 loss scale collapsed: a checkpoint is written, the run needs attention."""


class TrainingStopped(Exception):
    def __init__(self, message: str, exit_code: int, signal_name: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.signal_name = signal_name
        """The stop signal this rank received (None: another rank's, or no signal)."""


@dataclass
class Resumed:
    step: int
    sampler: dict[str, int]
    extra: dict[str, dict[str, torch.Tensor]]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.detach().float().add(1.0).mul(127.5).clamp(0, 255).round().to(torch.uint8)


def image_grid(images: torch.Tensor, columns: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> one uint8 [C, rows*H, columns*W] image for TensorBoard (N a multiple of columns)."""
    n, c, h, w = images.shape
    rows = n // columns
    grid = images[: rows * columns].reshape(rows, columns, c, h, w).permute(2, 0, 3, 1, 4)
    return grid.reshape(c, rows * h, columns * w)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated (on a GPU), else this process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batches_forever(loader: Any, sampler: Any, consumed: int,
                    count: Callable[[Any], int]) -> Iterator[tuple[Any, int]]:
    """Yield (batch, position in the epoch after it) forever; each time the loader runs dry, move the
    sampler to its next epoch. `count(batch)` is what the sampler's position counts (samples or batches)."""
    while True:
        for batch in loader:
            consumed += count(batch)
            yield batch, consumed
        sampler.set_epoch(sampler.epoch + 1)
        consumed = 0


def loader_worker_init(_: int) -> None:
    torch.set_num_threads(1)


def model_from_data(data: Any, model: ModelConfig, source: str) -> None:
    """The model's resolution and channels come from the dataset (as StyleGAN2-ADA derives them): unset
    ones are filled in (and so recorded in the run's resolved config); a value that differs is an error."""
    for name in ("resolution", "channels"):
        given, found = getattr(model, name), getattr(data, name)
        if given is not None and given != found:
            raise ConfigError(f"{source}: data is {data.resolution}px x{data.channels}, model.{name}={given}; "
                              f"leave model.{name} unset (it comes from the data) or prep the data at that size")
        setattr(model, name, found)


def node_index() -> int:
    """This process's node in the job: torchrun's GROUP_RANK, else Slurm's SLURM_NODEID, else 0."""
    for name in ("GROUP_RANK", "SLURM_NODEID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class Run:
    """The run folder and services of one training stage, on every rank."""

    def __init__(self, cfg: LoopConfig, stage: str) -> None:
        """Starts the engine and, on rank 0, the dataset's verification (in the background, while the
        loop loads its inputs and builds its models); writes nothing until `start()`."""
        self.cfg = cfg
        self.stage = stage
        self.engine: Engine = build_engine(cfg.engine)
        self.out = Path(cfg.out)
        self.checkpoints = self.out / "checkpoints"
        setup_logging(rank=self.engine.rank)
        self.tb: SummaryWriter | None = None
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="verify") if self.engine.is_main else None
        # Shards this run hashed before (a requeue): unchanged files are not hashed again.
        self._hashed = _read_hashed(self.out / HASHED_NAME) if self._checker else {}
        self._verified = (self._checker.submit(verify_dataset, cfg.data, cfg.verify, hashed=self._hashed)
                          if self._checker else None)
        self._stop_signal: str | None = None
        # Test hook: KSSGAN_INJECT_NAN="<step>,<rank>" makes that rank's losses NaN at that step.
        inject = os.environ.get("KSSGAN_INJECT_NAN")
        self._inject_nan = tuple(int(v) for v in inject.split(",")) if inject else None
        # Test hook: KSSGAN_TEST_HOLD_AT_STEP=<step> makes a run that did not resume wait at that step
        # for a stop signal, so a time-limit test sees its signal mid-run on a machine of any speed.
        hold = os.environ.get("KSSGAN_TEST_HOLD_AT_STEP")
        self._hold_at = int(hold) if hold else None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def start(self) -> None:
        """Collective, once every input is loaded and checked: wait for the dataset's verification,
        claim the run folder (a folder of another kind is refused) and write the run's records.
        Then `resume()`, which opens the metrics where the run goes on."""
        problem = ""
        if self._verified is not None:
            try:
                self._verified.result()
            except ShardError as err:
                problem = str(err)
        if all_reduce({"bad": 1.0 if problem else 0.0}, op="max")["bad"] > 0:
            raise ShardError(problem or f"{self.cfg.data}: rank 0 found the dataset damaged (see its error)")
        if self.engine.is_main:
            claim_folder(self.out, self.stage)
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            for stale in self.checkpoints.glob(".step-*.tmp"):  # a save cut short by a kill
                shutil.rmtree(stale, ignore_errors=True)
        barrier()
        setup_logging(self.out / f"{self.stage}.log" if self.engine.is_main else None, rank=self.engine.rank)
        if self.engine.is_main:
            self._write_run_record()
            if self.cfg.verify == "full":
                atomic_write_text(self.out / HASHED_NAME, json.dumps(self._hashed) + "\n")

    # ------------------------------------------------------------------ records
    def _write_run_record(self) -> None:
        """Before any training: the resolved config, git commit and package versions."""
        atomic_write_text(self.out / "resolved_config.yaml", dump_yaml(self.cfg))
        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                 cwd=Path(__file__).parent).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
        versions = {}
        for package in ("torch", "deepspeed", "accelerate", "h5py", "numpy", "kssgan-hpc"):
            try:
                versions[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                versions[package] = None
        record = {"stage": self.stage, "git_sha": sha or None, "python": sys.version.split()[0],
                  "packages": versions, "world_size": self.engine.world_size, "argv": sys.argv,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_text(self.out / "run.json", json.dumps(record, indent=1) + "\n")

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """Rank 0: TensorBoard scalars and one metrics.jsonl line (values already reduced over ranks)."""
        if not self.engine.is_main:
            return
        for key, value in values.items():
            self.tb.add_scalar(key, value, step)
        with open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, **{k: round(float(v), 6) for k, v in values.items()}}) + "\n")

    def throughput(self, images: int, seconds: float, models: tuple[str, ...]) -> dict[str, float]:
        """Collective: images/s of this rank, of each node and of all, peak memory, and each model's fp16
        loss scale. A slow node shows as its own curve (speed/images_per_s_node<i>)."""
        speed = images / seconds
        # Each rank fills its own slot, so one sum gathers every rank's speed and node.
        slots = {f"speed{self.engine.rank:05d}": speed, f"node{self.engine.rank:05d}": float(node_index())}
        gathered = all_reduce({f"{kind}{r:05d}": slots.get(f"{kind}{r:05d}", 0.0)
                               for r in range(self.engine.world_size) for kind in ("speed", "node")}, op="sum")
        values = {"speed/images_per_s_rank": speed,
                  "speed/images_per_s_total": sum(gathered[f"speed{r:05d}"] for r in range(self.engine.world_size)),
                  "memory/peak_mb": all_reduce({"m": peak_memory_mb(self.engine.device)}, op="max")["m"]}
        for r in range(self.engine.world_size):
            key = f"speed/images_per_s_node{int(gathered[f'node{r:05d}'])}"
            values[key] = values.get(key, 0.0) + gathered[f"speed{r:05d}"]
        for name in models:
            scale = self.engine.loss_scale(name)
            if scale is not None:
                values[f"loss_scale/{name}"] = scale
        return values

    def end_step(self, step: int, *, sampler: dict[str, int], models: tuple[str, ...],
                 extra: Callable[[], dict[str, dict[str, torch.Tensor]]] | None = None) -> None:
        """Collective, at every step boundary: checkpoint when due, when a rank was signalled or when an
        fp16 loss scale collapsed; then stop the run (TrainingStopped) in those two cases."""
        scales = {n: self.engine.loss_scale(n) for n in models}
        collapsed = [n for n, s in scales.items() if s is not None and s < self.cfg.engine.min_loss_scale]
        if step == self._hold_at:
            log.warning("test hook: holding at step %d until a stop signal", step)
            launcher = os.getppid()
            while not self.stop_requested():  # collective: every rank waits for the same event
                if os.getppid() != launcher:  # the launcher was killed: never outlive it as an orphan
                    raise self.stop(f"test hook: launcher gone while holding at step {step}", 1)
                time.sleep(0.5)
        stop = self.stop_requested()
        if step % self.cfg.checkpoint_every == 0 or step == self.cfg.steps or stop or collapsed:
            self.save_checkpoint(step, sampler=sampler, models=models, extra=extra() if extra else None)
        if collapsed:
            raise self.stop(
                f"fp16 loss scale of {', '.join(collapsed)} fell below engine.min_loss_scale="
                f"{self.cfg.engine.min_loss_scale} at step {step}: training diverged (checkpoint written). "
                "Lower the learning rates, or use engine.precision=bf16", EXIT_DIVERGED)
        if stop:
            raise self.stop(f"stopped by signal at step {step}; checkpoint written", EXIT_PREEMPTED)

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signal.Signals(signum).name

    def stop_requested(self) -> bool:
        """True on every rank when any rank got a stop signal (checked at step boundaries)."""
        flag = all_reduce({"stop": 1.0 if self._stop_signal else 0.0}, op="max")["stop"]
        return flag > 0

    def stop(self, message: str, exit_code: int) -> TrainingStopped:
        """Log why the run stops (into the run's log) and build the exception that carries the exit code."""
        log.warning("%s (exit code %d)", message, exit_code)
        return TrainingStopped(message, exit_code, self._stop_signal)

    def all_finite(self, loss: torch.Tensor, step: int) -> bool:
        """True on every rank only if the loss is finite on every rank: a NaN anywhere skips the step everywhere."""
        if self._inject_nan == (step, self.engine.rank):
            loss = loss * float("nan")
        finite = 1.0 if bool(torch.isfinite(loss.detach()).all()) else 0.0
        return all_reduce({"finite": finite}, op="min", device=None)["finite"] > 0

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, *, sampler: dict[str, int],
                        extra: dict[str, dict[str, torch.Tensor]] | None = None, models: tuple[str, ...] = ()) -> Path:
        """Collective. Atomic: a directory is renamed into place only when every rank has written its part.

        `models`: prepared names whose replicas are compared across ranks first (logged as replicas/<name>).
        """
        rank = self.engine.rank
        in_sync = {f"replicas/{name}": float(replicas_identical(self.engine.unwrap(name))) for name in models}
        if not all(in_sync.values()):
            log.error("step %d: ranks hold different parameters: %s", step, in_sync)
        self.log_scalars(step, in_sync)
        final = self.checkpoints / f"step-{step:08d}"
        tmp = self.checkpoints / f".step-{step:08d}.tmp"
        if self.engine.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        self.engine.save(tmp)
        if self.engine.is_main:
            for name, state in (extra or {}).items():
                save_file({k: v.detach().contiguous().cpu() for k, v in state.items()},
                          tmp / f"extra-{name}.safetensors")
            atomic_write_text(tmp / "config.yaml", dump_yaml(self.cfg))
        trainer = {"step": step, "sampler": sampler, "torch_rng": torch.get_rng_state(),
                   "python_rng": random.getstate()}
        if torch.cuda.is_available():
            trainer["cuda_rng"] = torch.cuda.get_rng_state()
        torch.save(trainer, tmp / f"trainer-rank{rank:05d}.pt")
        barrier()
        if self.engine.is_main:
            (tmp / "complete").write_text(f"{step}\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            atomic_write_text(self.checkpoints / "latest", final.name + "\n")
            self._prune(keep=self.cfg.keep_checkpoints)
            log.info("checkpoint %s", final)
        barrier()
        return final

    def _prune(self, keep: int) -> None:
        complete = sorted(p for p in self.checkpoints.glob("step-*") if (p / "complete").is_file())
        for old in complete[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.checkpoints)

    def resume(self) -> Resumed | None:
        """Collective, after `start()`. With resume=auto, restore the newest complete checkpoint (engine
        state, RNG, sampler). Either way, open the metrics at the step the run goes on from."""
        path = self.latest_checkpoint() if self.cfg.resume == "auto" else None
        resumed = self._restore(path) if path is not None else None
        self._open_metrics(resumed.step if resumed else 0)
        return resumed

    def _open_metrics(self, step: int) -> None:
        """Rank 0: metrics.jsonl and TensorBoard from `step` on. What was logged after it (by a run that
        died after its last checkpoint) is dropped, since it is logged again: no step appears twice."""
        if not self.engine.is_main:
            return
        metrics = self.out / "metrics.jsonl"
        if metrics.is_file():
            lines = metrics.read_text().splitlines(keepends=True)
            kept = [line for line in lines if _logged_step(line) <= step]
            if len(kept) < len(lines):
                atomic_write_text(metrics, "".join(kept))
                log.info("metrics: dropped %d line(s) logged after step %d; those steps run again",
                         len(lines) - len(kept), step)
        # purge_step: TensorBoard hides this folder's older events from step + 1 on.
        self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=step + 1)

    def _restore(self, path: Path) -> Resumed:
        self.engine.load(path)
        trainer_path = path / f"trainer-rank{self.engine.rank:05d}.pt"
        if not trainer_path.is_file():
            raise CheckpointError(f"{trainer_path}: missing; resume with the rank count the checkpoint was made with")
        trainer = read_state(trainer_path)
        torch.set_rng_state(trainer["torch_rng"])
        random.setstate(_as_tuple(trainer["python_rng"]))
        if "cuda_rng" in trainer and torch.cuda.is_available():
            torch.cuda.set_rng_state(trainer["cuda_rng"])
        extra = {p.stem.removeprefix("extra-"): read_weights(p) for p in path.glob("extra-*.safetensors")}
        log.info("resumed from %s (step %d)", path, trainer["step"])
        self._hold_at = None  # the hook holds a fresh run only
        return Resumed(step=trainer["step"], sampler=trainer["sampler"], extra=extra)

    def close(self) -> None:
        if self._checker is not None:
            self._checker.shutdown(wait=False, cancel_futures=True)
        if self.tb is not None:
            self.tb.close()
        self.engine.close()


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint: the `latest` pointer, else the newest directory with its marker."""
    pointer = checkpoints / "latest"
    if pointer.is_file():
        candidate = checkpoints / pointer.read_text().strip()
        if (candidate / "complete").is_file():
            return candidate
    complete = sorted(p for p in checkpoints.glob("step-*") if (p / "complete").is_file())
    return complete[-1] if complete else None


def checkpoint_with_config(run_dir: str | Path, cls: type, stage: str) -> tuple[Path, Any]:
    """The newest complete checkpoint of a `stage` run and the config it was trained with."""
    path = latest_checkpoint(Path(run_dir) / "checkpoints")
    if path is None:
        label = {"siamese": "Siamese", "gan": "GAN"}.get(stage, stage)
        raise CheckpointError(f"{run_dir}: no complete {label} checkpoint (run `kssgan train {stage}` first)")
    config = path / "config.yaml"
    try:
        values = yaml.safe_load(config.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CheckpointError(f"{config}: unreadable checkpoint config: {err}") from None
    return path, from_dict(cls, values if isinstance(values, dict) else {"": values}, str(config))


def _read_hashed(path: Path) -> dict[str, Any]:
    """The run's record of hashed shards; none (everything is hashed) when absent or unreadable."""
    try:
        hashed = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("%s: unreadable (%s); hashing every shard", path, err)
        return {}
    return hashed if isinstance(hashed, dict) else {}


def _logged_step(line: str) -> float:
    """The step of one metrics.jsonl line; a line cut short by a kill counts as after every step."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _as_tuple(value: Any) -> Any:
    """random.getstate() round-trips through torch.save as lists in places; setstate needs tuples."""
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_as_tuple(v) for v in value)
    return value
