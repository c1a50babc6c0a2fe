"""submitit jobs: an executor from a JobConfig, and training as a checkpointable, self-requeueing job.

The only place (with sweep trials) that imports submitit. A training job runs `train_siamese` or
`train_gan` in each task (one task per rank); kssgan_hpc.distributed turns the task's Slurm or
submitit variables into torch.distributed settings.

Requeue: submitit asks Slurm for USR2 `signal_delay_s` before the time limit. The training loop's
own handler takes that signal (it replaces submitit's while training runs): every rank checkpoints
at the next step boundary, then rank 0 hands over to submitit's handler, which pickles
`TrainTask.checkpoint()` (the same task; resume=auto continues from the checkpoint just written)
and runs `scontrol requeue`. Preemption (SIGTERM) checkpoints too; Slurm requeues preempted jobs
itself.

Failures: when a rank dies (its node lost, killed, crashed) the others fail at their next collective
(gloo: "Connection reset by peer"). A failing task that is not the victim of bad input claims the
restart (`restarts/<job>-<restart count>.json` in the job's submitit folder, created exclusively, so
one task of the many survivors requeues), then runs `scontrol requeue`: Slurm ends every task on
every node and starts the job again, which resumes from the last complete checkpoint. After
`max_restarts` such restarts the failure ends the job (FAILED). A node that is really gone is
Slurm's to handle: it ends the job as NODE_FAIL and requeues it (resume=auto continues it).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit

from kssgan_hpc.config import from_dict
from kssgan_hpc.config.launch import JobConfig
from kssgan_hpc.errors import InputError
from kssgan_hpc.train.stages import TRAIN_STAGES

log = logging.getLogger(__name__)


def make_executor(job: JobConfig, folder: str | Path | None = None) -> submitit.Executor:
    """A submitit executor for `job.executor` with the job's resources (unset ones left to Slurm)."""
    executor = submitit.AutoExecutor(folder=Path(folder or job.folder) / "%j", cluster=job.executor,
                                     slurm_max_num_timeout=job.max_requeues)
    extra = dict(job.slurm_extra)
    if job.account:
        extra["account"] = job.account
    params: dict[str, Any] = {
        "name": job.name, "nodes": job.nodes, "tasks_per_node": job.tasks_per_node,
        "cpus_per_task": job.cpus_per_task, "gpus_per_node": job.gpus_per_node, "timeout_min": job.time_min,
        "slurm_signal_delay_s": job.signal_delay_s,
        "slurm_partition": job.partition, "slurm_qos": job.qos, "slurm_constraint": job.constraint,
        "slurm_setup": list(job.setup), "slurm_additional_parameters": extra,
    }
    if job.mem_gb:
        params["mem_gb"] = job.mem_gb
    if job.executor == "local" and job.setup:
        params["local_setup"] = list(job.setup)
    if job.executor == "slurm":
        # Survivors of a lost rank must live to requeue the job: override a site's KillOnBadExit=1.
        params["slurm_srun_args"] = ["--kill-on-bad-exit=0"]
    executor.update_parameters(**params)
    return executor


def attach_job(job: JobConfig, folder: str | Path, job_id: str) -> submitit.Job | None:
    """A handle on a job that an earlier process submitted (a sweep driver before its crash);
    None where jobs live only inside their submitter (the debug executor)."""
    tasks = tuple(range(job.nodes * job.tasks_per_node))
    if job.executor == "slurm":
        return submitit.SlurmJob(folder=Path(folder) / "%j", job_id=job_id, tasks=tasks)
    if job.executor == "local":
        return submitit.LocalJob(folder=Path(folder) / "%j", job_id=job_id, tasks=tasks)
    return None


def find_submitted(job: JobConfig, name: str, since: float | None) -> str | None:
    """The id of a Slurm job named `name` submitted at or after `since` (epoch seconds): a submission
    that reached the scheduler although its submitter died before recording the id. None elsewhere."""
    if job.executor != "slurm":
        return None
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since or 0))
    ids = []
    for command in (["squeue", "-h", "-n", name, "-o", "%i"],
                    ["sacct", "-n", "-X", "-P", "--name", name, "-S", start, "-o", "JobID"]):
        try:
            ids += subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.split()
        except (OSError, subprocess.SubprocessError):
            continue
    ids = sorted({i for i in ids if i.isdigit()}, key=int)
    return ids[-1] if ids else None


def job_status(handle: submitit.Job) -> str:
    """running (also pending or requeued), done (a result or a final state to read), or gone (the
    scheduler and the job folder know nothing of it: it never started or its record is lost)."""
    if isinstance(handle, submitit.LocalJob) and handle._process is None:
        # Re-attached local job: its controller is not our child; the job id is its pid.
        pickles = [job.paths.result_pickle for job in (handle._sub_jobs or [handle])]
        if all(p.exists() for p in pickles):
            return "done"
        try:
            os.kill(int(handle.job_id), 0)
            return "running"
        except PermissionError:
            return "running"
        except (ProcessLookupError, ValueError):
            return "done" if any(p.exists() for p in pickles) else "gone"
    if handle.done():
        return "done"
    if isinstance(handle, submitit.SlurmJob) and handle.state.upper() == "UNKNOWN":
        queued = subprocess.run(["squeue", "-h", "-j", handle.job_id], capture_output=True, text=True, timeout=60)
        if queued.returncode != 0 or not queued.stdout.strip():
            return "gone"
    return "running"


def restart_after_failure(error: BaseException, out: Path, max_restarts: int) -> bool:
    """In a failing task of a Slurm job: True when the job is being restarted (this task requeued it,
    or another task already claimed the restart), False when the failure must end the job."""
    job_id, count = os.environ.get("SLURM_JOB_ID"), int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if not job_id or max_restarts < 1:
        return False
    records = submitit.JobEnvironment().paths.folder / "restarts"
    records.mkdir(parents=True, exist_ok=True)
    done = len(list(records.glob(f"{job_id}-*.json")))
    where = f"rank {os.environ.get('RANK', '?')} on {os.environ.get('SLURMD_NODENAME', '?')}"
    if done >= max_restarts:
        log.error("%s: %s: %s; no restart left (%d of slurm.max_restarts=%d used), the job fails",
                  where, type(error).__name__, error, done, max_restarts)
        return False
    from kssgan_hpc.checkpoints import CHECKPOINTS, latest_checkpoint

    checkpoint = latest_checkpoint(out / CHECKPOINTS)
    record = {"job": job_id, "restart": done + 1, "slurm_restart_count": count, "failed": where,
              "error": f"{type(error).__name__}: {error}"[:2000],
              "resumes_from": checkpoint.name if checkpoint else None, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        with open(records / f"{job_id}-{count}.json", "x") as fh:  # one task of the survivors claims it
            json.dump(record, fh, indent=1)
    except FileExistsError:
        log.warning("%s: %s; another task is restarting the job", where, type(error).__name__)
        return True
    log.error("%s: %s; requeueing job %s (restart %d of %d), it resumes from %s", where, record["error"], job_id,
              done + 1, max_restarts, record["resumes_from"] or "the start")
    requeued = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    if requeued.returncode != 0:
        log.error("scontrol requeue %s failed: %s", job_id, requeued.stderr.strip())
        return False
    return True


class TrainTask(submitit.helpers.Checkpointable):
    """One training run as a submitit job; every task is one rank."""

    def __init__(self, stage: str, config: dict[str, Any], threads: int = 0, max_restarts: int = 0) -> None:
        if stage not in TRAIN_STAGES:
            raise ValueError(f"unknown training stage {stage!r}; use one of {', '.join(TRAIN_STAGES)}")
        self.stage = stage
        self.config = config
        """The resolved stage config as a dict (resume must be auto for requeues to continue)."""
        self.threads = threads
        """torch threads per task (the job's cpus_per_task): without cgroups a task sees every core."""
        self.max_restarts = max_restarts
        """Restarts of the job after a failure (slurm.max_restarts); see restart_after_failure."""

    def __call__(self) -> str:
        # torch (through these) only after the thread limit: this module is what a job unpickles first.
        if self.threads:
            # Also for Accelerate, which otherwise sets threads = cores / local ranks: jobs sharing
            # a node then oversubscribe it, and OpenMP's spinning threads slow each down ~40x.
            os.environ["OMP_NUM_THREADS"] = str(self.threads)
            import torch

            torch.set_num_threads(self.threads)
        from kssgan_hpc.distributed import apply_distributed_env
        from kssgan_hpc.folders import hold_writer_locks
        from kssgan_hpc.train.run import EXIT_PREEMPTED, TrainingStopped
        from kssgan_hpc.train.stages import train_stage

        apply_distributed_env()
        hold_writer_locks()  # as under the CLI: one run writes its folder
        cfg = from_dict(TRAIN_STAGES[self.stage], self.config, f"{self.stage} job config")
        requeue_signal = submitit.JobEnvironment._usr_sig()
        requeue = signal.getsignal(requeue_signal)  # submitit's handler, before the run replaces it
        try:
            return str(train_stage(self.stage, cfg))
        except TrainingStopped as stop:
            if stop.exit_code != EXIT_PREEMPTED:
                raise
            if stop.signal_name == requeue_signal.name and callable(requeue):
                log.info("checkpoint written; requeueing through submitit")
                requeue(requeue_signal, None)  # rank 0: pickles checkpoint(), scontrol requeue, exits
            sys.exit(EXIT_PREEMPTED)  # other ranks, and stops that are not requeued (scancel, preemption)
        except InputError:
            raise  # bad input stays bad: restarting cannot help
        except Exception as err:
            if not restart_after_failure(err, Path(cfg.out), self.max_restarts):
                raise
            # Exit without a result, so submitit does not record the job as finished.
            sys.exit(EXIT_PREEMPTED)

