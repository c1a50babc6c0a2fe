"""`kssgan sweep`: a population of trials in flight, asked of and told to a nevergrad optimizer.

Steady state, like nevergrad's `minimize(batch_mode=False)`, but written out so that it survives a
cluster: whenever fewer than num_workers trials are in flight a new point is asked and submitted
as its own submitit job; a finished job's objective is told at once. A failed, cancelled or
timed-out trial is told the failure penalty and recorded with its error: the population goes on
until more than max_failure_rate of the finished trials failed.

State, rewritten atomically after every ask, submit and tell (the optimizer first, then the trials):
  state/optimizer-<sha256>.pkl  the optimizer and the candidates in flight, pickled together
                        (nevergrad ties a tell to its candidate object); named by its digest, so the
                        previous one stays valid until trials.jsonl points to the new one.
  trials.jsonl          every trial: params, status, job id, times, objective, metrics, error; its
                        last line {"optimizer_state": <file>, "sha256": <digest>} names the pickle.
Unpickling runs code, so `--resume` loads the pickle only if it is owned by this user, not group-
or world-writable, and its sha256 is the one trials.jsonl recorded (a planted file is refused).
`--resume` reads both, tells what finished while the driver was away, re-attaches the jobs in
flight and resubmits (max_resubmits times) a job the scheduler no longer knows.

Outputs after every tell: results.csv and results.json, best_config.yaml (a scenario file ready
for a full `kssgan train gan --config`), TensorBoard hparams per trial and the best-so-far curve.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nevergrad as ng
import yaml

from kssgan_hpc.config import ConfigError, load_config, to_dict
from kssgan_hpc.config.sweep import SweepConfig
from kssgan_hpc.config.train import GanConfig
from kssgan_hpc.errors import InputError, RunFailure
from kssgan_hpc.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from kssgan_hpc.folders import claim_folder
from kssgan_hpc.launch.submit import attach_job, find_submitted, job_status, make_executor
from kssgan_hpc.sweep.space import as_overrides, parametrization, plain
from kssgan_hpc.sweep.trial import TrialTask

log = logging.getLogger(__name__)

PATH_KEYS = ("data", "out", "siamese", "clusters")


def error_summary(error: str) -> str:
    """The line that says what went wrong: the exception of a job's traceback, else the first line."""
    lines = [line for line in error.splitlines() if line.strip()]
    final = [line for line in lines if not line.startswith((" ", "FailedJobError:")) and
             ("Error" in line or "Exception" in line)]
    return (final[-1] if final else lines[0] if lines else error).strip()


class SweepStateError(InputError):
    """The sweep's saved state is missing, damaged or not safe to unpickle."""


class SweepAborted(RunFailure):
    """Too many trials failed; the message says how many and where their errors are."""


@dataclass
class Trial:
    trial: int
    params: dict[str, Any]
    status: str = "asked"
    """asked (no job yet), running, completed, infeasible (a constraint broken) or failed."""
    asked: float | None = None
    job_id: str | None = None
    submissions: int = 0
    submitted: float | None = None
    started: float | None = None
    ended: float | None = None
    objective: float | None = None
    told: float | None = None
    """The value told to the optimizer (the objective, or the failure penalty)."""
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "infeasible", "failed")


class Sweep:
    def __init__(self, cfg: SweepConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out).resolve()
        self.trials: list[Trial] = []
        self.pending: dict[int, ng.p.Parameter] = {}
        self.handles: dict[int, Any] = {}
        self.optimizer: ng.optimizers.base.Optimizer | None = None
        self.executor = None
        self.tell_overhead_s: list[float] = []
        self.tb = None
        if cfg.optimizer not in ng.optimizers.registry:
            import difflib

            close = difflib.get_close_matches(cfg.optimizer, list(ng.optimizers.registry), n=3, cutoff=0.5)
            raise ConfigError(f"optimizer={cfg.optimizer!r} is not in nevergrad's registry"
                              + (f"; did you mean {', '.join(close)}?" if close else ""))
        self._check_space()

    # ------------------------------------------------------------------ setup
    def trial_config(self, params: dict[str, Any], out: Path | None, for_trial: bool = True) -> GanConfig:
        overrides = [*(self.cfg.trial_overrides if for_trial else []), *as_overrides(params)]
        if out is not None:
            overrides.append(f"out={out}")
        return load_config(GanConfig, self.cfg.base_config, overrides, section=self.cfg.stage)

    def _check_space(self) -> None:
        """Every key of the space must be a key of the stage config, valid at each end of its range."""
        for key, spec in self.cfg.space.items():
            probes = spec.values if spec.type == "choice" else [spec.low, spec.high]
            for value in probes:
                try:
                    self.trial_config({key: int(value) if spec.type == "int" else value}, None)
                except ConfigError as err:
                    raise ConfigError(f"sweep space does not fit {self.cfg.base_config}: {err}") from None

    def has_state(self) -> bool:
        return (self.out / "trials.jsonl").is_file()

    def _read_state(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """trials.jsonl: (trial records, its last line naming the optimizer pickle and its digest)."""
        path = self.out / "trials.jsonl"
        try:
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (OSError, ValueError) as err:
            raise SweepStateError(f"{path}: unreadable sweep state: {err}") from None
        if not lines or "optimizer_state" not in lines[-1]:
            raise SweepStateError(f"{path}: its last line does not name the optimizer state (a sweep of an older "
                                  "version, or an edited file); start a new sweep in another out")
        return lines[:-1], lines[-1]

    def _load_optimizer(self, record: dict[str, Any]) -> dict[str, Any]:
        """Unpickle the optimizer state only if this user owns it, nobody else may write it, and its
        digest is the one trials.jsonl recorded: unpickling runs whatever the file says."""
        name = str(record["optimizer_state"])
        path = self.out / "state" / name
        if Path(name).name != name or not path.is_file():
            raise SweepStateError(f"{path}: the optimizer state named in trials.jsonl is missing")
        for where in (path, path.parent):
            info = where.stat()
            if info.st_uid != os.getuid():
                raise SweepStateError(f"{where}: owned by uid {info.st_uid}, not by you; refusing to unpickle")
            if info.st_mode & 0o022:
                raise SweepStateError(f"{where}: writable by group or others (mode {info.st_mode & 0o777:o}); "
                                      "refusing to unpickle (chmod go-w it if you trust it)")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != record.get("sha256"):
            raise SweepStateError(f"{path}: sha256 differs from the one trials.jsonl recorded; refusing to unpickle")
        return pickle.loads(data)  # noqa: S301 - owner, permissions and digest checked above

    def _open(self, resume: bool) -> None:
        if resume:
            if not self.has_state():
                raise SweepStateError(f"{self.out}: no sweep state to resume (start without --resume)")
            claim_folder(self.out, "sweep")  # its writer lock: one driver at a time
            saved = json.loads((self.out / "sweep.json").read_text())["config"]
            if saved != to_dict(self.cfg):
                raise ConfigError(f"{self.out}: the sweep was started with another configuration; resume with "
                                  f"the same file, or start a new sweep in another out folder")
            records, state = self._read_state()
            loaded = self._load_optimizer(state)
            self.optimizer, self.pending = loaded["optimizer"], loaded["pending"]
            self.trials = [Trial(**record) for record in records]
        else:
            if self.has_state():
                raise SweepStateError(f"{self.out} holds a sweep already: --resume it, or choose another out")
            claim_folder(self.out, "sweep")
            (self.out / "state").mkdir(mode=0o700, parents=True, exist_ok=True)
            self.optimizer = ng.optimizers.registry[self.cfg.optimizer](
                parametrization=parametrization(self.cfg.space, self.cfg.seed),
                budget=self.cfg.budget, num_workers=self.cfg.num_workers)
            atomic_write_json(self.out / "sweep.json", {"config": to_dict(self.cfg), "optimizer": self.chosen(),
                                                        "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.executor = make_executor(self.cfg.trial, self.out / "submitit")
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(self.out / "tensorboard"))

    def chosen(self) -> str:
        """The optimizer at work: NGOpt (a selector) delegates to the algorithm it picked."""
        inner = getattr(self.optimizer, "optim", None)
        return self.cfg.optimizer + (f" -> {getattr(inner, 'name', type(inner).__name__)}" if inner else "")

    # ------------------------------------------------------------------ state
    def save(self) -> None:
        data = pickle.dumps({"optimizer": self.optimizer, "pending": self.pending})
        digest = hashlib.sha256(data).hexdigest()
        name = f"optimizer-{digest[:16]}.pkl"
        state = self.out / "state"
        known = (state / name).exists()  # the same state as saved before (nothing asked or told since)
        atomic_write_bytes(state / name, data, mode=0o600)  # only the owner may read what gets unpickled
        lines = [json.dumps(asdict(t)) for t in self.trials] + [json.dumps({"optimizer_state": name, "sha256": digest})]
        try:
            atomic_write_text(self.out / "trials.jsonl", "\n".join(lines) + "\n")
        except OSError:
            if not known:  # a full disk: trials.jsonl still names the previous pickle, keep only that one
                (state / name).unlink(missing_ok=True)
            raise
        for old in state.glob("optimizer-*.pkl"):  # trials.jsonl names the new one now
            if old.name != name:
                old.unlink(missing_ok=True)

    def _candidate(self, trial: Trial) -> ng.p.Parameter:
        """The asked candidate; rebuilt from the params when the driver died between its two writes."""
        if trial.trial not in self.pending:
            self.pending[trial.trial] = self.optimizer.parametrization.spawn_child(new_value=trial.params)
        return self.pending[trial.trial]

    # ------------------------------------------------------------------ trials
    def _submit(self, trial: Trial) -> None:
        out = self.out / "trials" / f"trial-{trial.trial:04d}"
        config = to_dict(self.trial_config(trial.params, out))
        for key in PATH_KEYS:
            config[key] = str(Path(config[key]).resolve())
        task = TrialTask(self.cfg.stage, config, to_dict(self.cfg.objective), threads=self.cfg.trial.cpus_per_task,
                         max_restarts=self.cfg.trial.max_restarts)
        self.executor.update_parameters(name=self._job_name(trial))
        job = self.executor.submit(task)
        trial.job_id, trial.status, trial.submitted = job.job_id, "running", time.time()
        trial.submissions += 1
        self.handles[trial.trial] = job
        self.save()
        log.info("trial %d submitted as job %s: %s", trial.trial, job.job_id, trial.params)

    def _job_name(self, trial: Trial) -> str:
        return f"{self.cfg.name}-t{trial.trial:03d}"

    def _ask(self) -> None:
        candidate = self.optimizer.ask()
        trial = Trial(trial=len(self.trials), params=plain(candidate.value), asked=time.time())
        self.trials.append(trial)
        self.pending[trial.trial] = candidate
        self.save()  # the ask is on disk before any job exists
        self._submit(trial)

    def _finish(self, trial: Trial) -> None:
        """Read the job's result; never raises: a failure is recorded with its error."""
        job = self.handles.pop(trial.trial)
        try:
            result = job.results()[0]
            trial.objective, trial.metrics, trial.started = result["objective"], result["metrics"], result["started"]
            trial.status = "completed"
            if result.get("violations"):  # it ran, but broke a constraint (privacy): told the penalty
                trial.status, trial.error = "infeasible", "; ".join(result["violations"])
        except Exception as err:  # noqa: BLE001 - any failure of a trial is data, not a crash of the sweep
            trial.status, trial.error = "failed", f"{type(err).__name__}: {err}"[-4000:]
            log.warning("trial %d (job %s) failed: %s", trial.trial, trial.job_id, error_summary(trial.error))
        trial.ended = time.time()
        self._tell(trial)

    def _tell(self, trial: Trial) -> None:
        tick = time.perf_counter()
        # A failed or infeasible trial is told the penalty: the optimizer learns to avoid its region.
        trial.told = trial.objective if trial.status == "completed" else self.cfg.failure_penalty
        self.optimizer.tell(self._candidate(trial), trial.told)
        self.pending.pop(trial.trial)
        self.save()
        self._write_results()
        self.tell_overhead_s.append(time.perf_counter() - tick)
        self._log_trial(trial)
        log.info("trial %d %s: objective %s", trial.trial, trial.status, trial.objective)

    # ------------------------------------------------------------------ outputs
    def best(self) -> Trial | None:
        done = [t for t in self.trials if t.status == "completed"]
        return min(done, key=lambda t: t.objective) if done else None

    def _write_results(self) -> None:
        rows = []
        for t in self.trials:
            wall = None if t.ended is None or t.submitted is None else round(t.ended - t.submitted, 2)
            rows.append({"trial": t.trial, "status": t.status, "objective": t.objective, "told": t.told,
                         "job_id": t.job_id, "wall_s": wall, **{f"param.{k}": v for k, v in t.params.items()},
                         **{f"metric.{k}": v for k, v in t.metrics.items()}, "error": t.error})
        atomic_write_json(self.out / "results.json", rows)
        columns = list(dict.fromkeys(key for row in rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.out / "results.csv", buffer.getvalue())
        best = self.best()
        if best is not None:
            scenario = yaml.safe_load(Path(self.cfg.base_config).read_text()) or {}
            scenario[self.cfg.stage] = to_dict(self.trial_config(best.params, self.out / "best", for_trial=False))
            header = (f"# Best configuration of sweep {self.cfg.name!r}: trial {best.trial} (job {best.job_id}), "
                      f"objective {best.objective:.6g}\n# tuned: {json.dumps(best.params)}\n"
                      f"# train it in full: kssgan train {self.cfg.stage} --config <this file>\n")
            atomic_write_text(self.out / "best_config.yaml", header + yaml.safe_dump(scenario, sort_keys=False))

    def _log_trial(self, trial: Trial) -> None:
        told = sum(t.told is not None for t in self.trials)
        best = self.best()
        self.tb.add_scalar("sweep/objective", trial.told, told)
        if best is not None:
            self.tb.add_scalar("sweep/best_so_far", best.objective, told)
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in trial.params.items()}
        metrics = {"hparam/objective": trial.told, "hparam/failed": float(trial.status == "failed"),
                   **{f"hparam/{k}": v for k, v in trial.metrics.items()}}
        self.tb.add_hparams(hparams, metrics, run_name=f"trial-{trial.trial:04d}")
        self.tb.flush()

    # ------------------------------------------------------------------ the loop
    def _resume_in_flight(self) -> None:
        for trial in self.trials:
            if trial.finished:
                if trial.trial in self.pending:  # told on disk in trials.jsonl, not yet in the optimizer
                    self.optimizer.tell(self.pending.pop(trial.trial), trial.told)
                continue
            self._candidate(trial)
            if trial.job_id is None:  # the driver may have died between submitting the job and recording it
                found = find_submitted(self.cfg.trial, self._job_name(trial), trial.asked)
                if found is not None:
                    trial.job_id, trial.status, trial.submissions, trial.submitted = found, "running", 1, trial.asked
                    log.info("trial %d: found its job %s, submitted before the driver stopped", trial.trial, found)
            handle = None if trial.job_id is None else attach_job(self.cfg.trial, self.out / "submitit", trial.job_id)
            if handle is not None and not handle.paths.submitted_pickle.exists():
                # The driver died between sbatch and submitit moving the pickled task into the job's
                # folder: the job can never run its task. Cancel it; the trial is submitted again.
                log.warning("trial %d: job %s has no pickled task (the driver stopped while submitting it); "
                            "cancelling it", trial.trial, trial.job_id)
                handle.cancel(check=False)
                handle = None
            if handle is not None and job_status(handle) != "gone":
                self.handles[trial.trial] = handle
                log.info("trial %d: re-attached job %s", trial.trial, trial.job_id)
            elif trial.submissions <= self.cfg.max_resubmits:
                log.warning("trial %d: job %s is gone; resubmitting", trial.trial, trial.job_id)
                self._submit(trial)
            else:
                trial.status, trial.ended = "failed", time.time()
                trial.error = f"job {trial.job_id} gone after resubmission"
                self._tell(trial)
        self.save()

    def _check_failures(self) -> None:
        finished = [t for t in self.trials if t.finished]
        failed = [t for t in finished if t.status == "failed"]
        if len(finished) >= self.cfg.num_workers and len(failed) / len(finished) > self.cfg.max_failure_rate:
            for trial in list(self.handles):
                self.handles.pop(trial).cancel(check=False)
            raise SweepAborted(
                f"{len(failed)} of {len(finished)} finished trials failed, above max_failure_rate="
                f"{self.cfg.max_failure_rate}: sweep aborted, trials in flight cancelled. First error "
                f"(trial {failed[0].trial}): {error_summary(failed[0].error or '')}. All errors: "
                f"{self.out / 'results.csv'}; job logs: {self.out / 'submitit'}")

    def run(self, resume: bool = False) -> Trial | None:
        """Run (or resume) the sweep to its budget; returns the best trial."""
        self._open(resume)
        log.info("sweep %s: optimizer %s, budget %d, %d in flight, out %s", self.cfg.name, self.chosen(),
                 self.cfg.budget, self.cfg.num_workers, self.out)
        if resume:
            self._resume_in_flight()
        try:
            while True:
                for trial in [t for t in self.trials if t.trial in self.handles]:
                    if job_status(self.handles[trial.trial]) != "running":
                        self._finish(trial)
                self._check_failures()
                while len(self.handles) < self.cfg.num_workers and len(self.trials) < self.cfg.budget:
                    self._ask()
                if not self.handles:
                    break
                time.sleep(self.cfg.poll_s)
        finally:
            self.tb.close()
            record = json.loads((self.out / "sweep.json").read_text())
            # Overhead per tell over every session of the driver (a resumed one adds to the record).
            before = record.get("tell_overhead_s") or {"count": 0, "mean": None, "max": None}
            count = before["count"] + len(self.tell_overhead_s)
            total = (before["mean"] or 0.0) * before["count"] + sum(self.tell_overhead_s)
            record.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S") if not self.handles else None,
                          tell_overhead_s={"mean": total / count if count else None, "count": count,
                                           "max": max([*self.tell_overhead_s, *([before["max"]] if before["max"]
                                                                                else [])], default=None)})
            atomic_write_json(self.out / "sweep.json", record)
        return self.best()
