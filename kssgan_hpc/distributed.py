"""The distributed environment, in one place: launcher variables -> torch.distributed, the device, collectives.

One function turns the process environment into torch.distributed settings.

Sources, in order: torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT — also what a
torchrun started by srun sees), Slurm tasks (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; as master
the NodeAddr of the first node of SLURM_JOB_NODELIST, or KSSGAN_MASTER_ADDR where a template
exported it; a port derived from SLURM_JOB_ID so jobs sharing a node do not collide, and from
the job's restart count and step id so a rerun does not meet its predecessor's socket), submitit's
JobEnvironment (its Slurm executor's tasks are Slurm tasks; its local executor sets
SUBMITIT_LOCAL_* for each task on this host), else one plain process. A variable that is
missing from an otherwise complete set, or values that contradict each other, are an error that
names them: never a silent single-process run.

One rule chooses the device (`choose_device`): "auto" is this rank's GPU where there is one, else the
CPU. The engines, anonymize and evaluate all follow it. The collectives below (all_reduce, barrier,
replicas_identical) are identities without a process group, so the same code runs as one process.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from kssgan_hpc.errors import InputError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
SLURM_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_JOB_ID")
SUBMITIT_LOCAL_VARS = ("SUBMITIT_LOCAL_GLOBALID", "SUBMITIT_LOCAL_NTASKS", "SUBMITIT_LOCAL_LOCALID",
                       "SUBMITIT_LOCAL_JOB_ID")
PORT_BASE, PORT_RANGE = 20000, 20000
RERUN_STRIDE = 1009
"""Port offset per rerun of a job or step: prime, so reruns of nearby job ids rarely meet."""


class LaunchError(InputError):
    """The launcher's variables are incomplete or contradictory; names the variables."""


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    source: str
    """torchrun, slurm, submitit-local or single."""

    def backend(self, cuda: bool) -> str:
        return "nccl" if cuda else "gloo"


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host list -> host names: 'gpu[01-03,07],login1' -> gpu01 gpu02 gpu03 gpu07 login1."""
    hosts: list[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", hostlist):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if match is None:
            hosts.append(item)
            continue
        prefix, ranges, suffix = match.groups()
        for part in ranges.split(","):
            if "-" in part:
                low, high = part.split("-", 1)
                hosts.extend(f"{prefix}{n:0{len(low)}d}{suffix}" for n in range(int(low), int(high) + 1))
            else:
                hosts.append(f"{prefix}{part}{suffix}")
    if not hosts:
        raise LaunchError(f"SLURM_JOB_NODELIST={hostlist!r} names no host")
    return hosts


def node_address(node: str) -> str:
    """The address of Slurm node `node`: its NodeAddr. A node's name need not resolve as a host name
    (nodes named n1, n2 on one host; clusters whose node names differ from their network names), so the
    master address comes from Slurm, not from DNS; without scontrol, the name itself."""
    try:
        shown = subprocess.run(["scontrol", "show", "node", "-o", node], capture_output=True, text=True,
                               timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return node
    match = re.search(r"\bNodeAddr=(\S+)", shown)
    return match.group(1) if match else node


def _ints(env: Mapping[str, str], names: tuple[str, ...]) -> dict[str, int]:
    values = {}
    for name in names:
        try:
            values[name] = int(env[name])
        except ValueError:
            raise LaunchError(f"{name}={env[name]!r} is not an integer") from None
    return values


def distributed_env(env: Mapping[str, str] | None = None) -> DistEnv:
    env = os.environ if env is None else env
    present = [v for v in TORCHRUN_VARS if v in env]
    if present:
        missing = [v for v in TORCHRUN_VARS if v not in env]
        if missing:
            raise LaunchError(f"torchrun variables incomplete: {', '.join(present)} set but {', '.join(missing)} "
                              "missing; launch with torchrun, or unset them")
        n = _ints(env, ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"))
        if not 0 <= n["RANK"] < n["WORLD_SIZE"] or not 0 <= n["LOCAL_RANK"] < n["WORLD_SIZE"]:
            raise LaunchError(f"RANK={n['RANK']} LOCAL_RANK={n['LOCAL_RANK']} do not fit WORLD_SIZE={n['WORLD_SIZE']}")
        return DistEnv(n["RANK"], n["LOCAL_RANK"], n["WORLD_SIZE"], env["MASTER_ADDR"], n["MASTER_PORT"], "torchrun")
    # Before Slurm: a local submitit job started inside an allocation (a sweep driver's trials) also
    # inherits the allocation's SLURM_* variables, which describe the driver, not the trial.
    if "SUBMITIT_LOCAL_GLOBALID" in env:
        missing = [v for v in SUBMITIT_LOCAL_VARS if v not in env]
        if missing:
            raise LaunchError(f"submitit local task variables incomplete: {', '.join(missing)} missing")
        n = _ints(env, SUBMITIT_LOCAL_VARS)
        rank, world = n["SUBMITIT_LOCAL_GLOBALID"], n["SUBMITIT_LOCAL_NTASKS"]
        if not 0 <= rank < world:
            raise LaunchError(f"SUBMITIT_LOCAL_GLOBALID={rank} does not fit SUBMITIT_LOCAL_NTASKS={world}")
        port = PORT_BASE + n["SUBMITIT_LOCAL_JOB_ID"] % PORT_RANGE
        return DistEnv(rank, n["SUBMITIT_LOCAL_LOCALID"], world, "127.0.0.1", port, "submitit-local")
    if "SLURM_PROCID" in env:
        missing = [v for v in SLURM_VARS if v not in env]
        if missing:
            raise LaunchError(f"Slurm task variables incomplete: {', '.join(missing)} missing (run the task with srun)")
        n = _ints(env, ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_ID"))
        if not 0 <= n["SLURM_PROCID"] < n["SLURM_NTASKS"]:
            raise LaunchError(f"SLURM_PROCID={n['SLURM_PROCID']} does not fit SLURM_NTASKS={n['SLURM_NTASKS']}")
        master = env.get("KSSGAN_MASTER_ADDR") or node_address(expand_hostlist(env["SLURM_JOB_NODELIST"])[0])
        # A rerun of the job (requeue) or of its step gets another port: the last one's listening
        # socket may still be in TIME_WAIT, and binding it fails (EADDRINUSE).
        rerun = sum(int(env.get(name, "0")) if env.get(name, "0").isdigit() else 0
                    for name in ("SLURM_RESTART_COUNT", "SLURM_STEP_ID"))
        port = PORT_BASE + (n["SLURM_JOB_ID"] + RERUN_STRIDE * rerun) % PORT_RANGE
        return DistEnv(n["SLURM_PROCID"], n["SLURM_LOCALID"], n["SLURM_NTASKS"], master, port, "slurm")
    return DistEnv(0, 0, 1, "127.0.0.1", 0, "single")


def apply_distributed_env(env: DistEnv | None = None) -> DistEnv:
    """Export the settings as torchrun would, so Accelerate and DeepSpeed initialise from env://."""
    env = distributed_env() if env is None else env
    if env.source in ("slurm", "submitit-local"):
        os.environ.update(RANK=str(env.rank), LOCAL_RANK=str(env.local_rank), WORLD_SIZE=str(env.world_size),
                          MASTER_ADDR=env.master_addr, MASTER_PORT=str(env.master_port))
    return env


def node_index() -> int:
    """This process's node in the job: torchrun's GROUP_RANK, else Slurm's SLURM_NODEID, else 0."""
    for name in ("GROUP_RANK", "SLURM_NODEID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def choose_device(setting: str = "auto", local_rank: int = 0) -> torch.device:
    """The one device rule: "auto" -> this rank's GPU (cuda:<local rank>) where there is one, else the
    CPU; any other setting ("cpu", "cuda:1") as given."""
    if setting == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(setting)


def join_process_group(device: str = "auto") -> tuple[DistEnv, torch.device]:
    """For work outside the engines (anonymize): read the launcher's variables, choose this rank's
    device and, with more than one rank, join the process group (nccl on GPUs, gloo on CPUs)."""
    env = apply_distributed_env()
    chosen = choose_device(device, env.local_rank)
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group(env.backend(chosen.type == "cuda"))
    return env, chosen


def all_reduce(values: dict[str, float], op: str = "mean", device: torch.device | None = None) -> dict[str, float]:
    """Mean (or max/min/sum) of scalar metrics over all ranks; identity without a process group."""
    if not values or not (dist.is_available() and dist.is_initialized()):
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    reduce_op = {"mean": dist.ReduceOp.SUM, "sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                 "min": dist.ReduceOp.MIN}[op]
    dist.all_reduce(tensor, op=reduce_op)
    if op == "mean":
        tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist()))


def replicas_identical(module: nn.Module) -> bool:
    """True when every rank holds bit-identical parameters and buffers (a silent desync check)."""
    digest = hashlib.sha256()
    for tensor in [*module.parameters(), *module.buffers()]:
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    if not (dist.is_available() and dist.is_initialized()):
        return True
    digests: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(digests, digest.hexdigest())
    return len(set(digests)) == 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
