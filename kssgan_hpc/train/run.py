"""What every training loop shares: the run folder, its records (metrics, TensorBoard), the engine, signals.

`Run` starts the engine, claims and records the run folder, logs metrics, stops on a signal at a
step boundary and resumes; the checkpoints themselves (layout, save, restore, prune) are
checkpoints.CheckpointManager's.
"""

from __future__ import annotations

import json
import logging
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from kssgan_hpc import testhooks
from kssgan_hpc.checkpoints import CheckpointManager, Resumed, logged_step
from kssgan_hpc.config import dump_yaml
from kssgan_hpc.config.core import ConfigError
from kssgan_hpc.config.train import LoopConfig, ModelConfig
from kssgan_hpc.data.shards import ShardError, verify_dataset
from kssgan_hpc.distributed import all_reduce, barrier, node_index, replicas_identical
from kssgan_hpc.engine.base import Engine, build_engine
from kssgan_hpc.files import atomic_write_text
from kssgan_hpc.folders import claim_folder
from kssgan_hpc.logs import setup_logging

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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def keyed_generator(*keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded from `keys` (seed, rank, step, ...), not from the global RNG, which
    a resumed DataLoader also draws from: a resumed run draws what an uninterrupted one would."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> 1))


class Run:
    """The run folder and services of one training stage, on every rank."""

    def __init__(self, cfg: LoopConfig, stage: str) -> None:
        """Starts the engine and, on rank 0, the dataset's verification (in the background, while the
        loop loads its inputs and builds its models); writes nothing until `start()`."""
        self.cfg = cfg
        self.stage = stage
        self.engine: Engine = build_engine(cfg.engine)
        self.out = Path(cfg.out)
        self.checkpoints = CheckpointManager(self.out, self.engine, keep=cfg.keep_checkpoints)
        setup_logging(rank=self.engine.rank)
        self.tb: SummaryWriter | None = None
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="verify") if self.engine.is_main else None
        # Shards this run hashed before (a requeue): unchanged files are not hashed again.
        self._hashed = _read_hashed(self.out / HASHED_NAME) if self._checker else {}
        self._verified = (self._checker.submit(verify_dataset, cfg.data, cfg.verify, hashed=self._hashed)
                          if self._checker else None)
        self._stop_signal: str | None = None
        self._inject_nan = testhooks.nan_injection()
        self._hold_at = testhooks.hold_step()
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
            self.checkpoints.prepare()
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
            testhooks.hold_until_stopped(step, self.stop_requested,
                                         lambda: self.stop(f"test hook: launcher gone while holding at step {step}", 1))
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
        """Collective: compare the `models`' replicas across ranks (logged as replicas/<name>), then checkpoint."""
        in_sync = {f"replicas/{name}": float(replicas_identical(self.engine.unwrap(name))) for name in models}
        if not all(in_sync.values()):
            log.error("step %d: ranks hold different parameters: %s", step, in_sync)
        self.log_scalars(step, in_sync)
        return self.checkpoints.save(step, sampler=sampler, config=self.cfg, extra=extra)

    def begin(self, sampler: Any) -> Resumed:
        """Collective, once every input is loaded and checked: `start()`, then `resume()`; the sampler is
        moved to where the run goes on. A fresh run resumes at step 0 with no extras."""
        self.start()
        resumed = self.resume()
        if resumed is None:
            return Resumed(sampler={"consumed": 0})
        sampler.load_state_dict(resumed.sampler)
        return resumed

    def resume(self) -> Resumed | None:
        """Collective, after `start()`. With resume=auto, restore the newest complete checkpoint (engine
        state, RNG, sampler). Either way, open the metrics at the step the run goes on from."""
        path = self.checkpoints.latest() if self.cfg.resume == "auto" else None
        resumed = self.checkpoints.restore(path) if path is not None else None
        if resumed is not None:
            self._hold_at = None  # the hook holds a fresh run only
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
            kept = [line for line in lines if logged_step(line) <= step]
            if len(kept) < len(lines):
                atomic_write_text(metrics, "".join(kept))
                log.info("metrics: dropped %d line(s) logged after step %d; those steps run again",
                         len(lines) - len(kept), step)
        # purge_step: TensorBoard hides this folder's older events from step + 1 on.
        self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=step + 1)

    def close(self) -> None:
        if self._checker is not None:
            self._checker.shutdown(wait=False, cancel_futures=True)
        if self.tb is not None:
            self.tb.close()
        self.engine.close()


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
