"""Launcher environments -> torch.distributed settings; incomplete or contradictory ones are errors."""

import pytest

from kssgan_hpc.distributed import LaunchError, distributed_env, expand_hostlist

TORCHRUN = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node1", "MASTER_PORT": "29400"}
SLURM = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08,11]",
         "SLURM_JOB_ID": "123456"}
LOCAL = {"SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_LOCALID": "1",
         "SUBMITIT_LOCAL_JOB_ID": "4242"}


def test_hostlists() -> None:
    assert expand_hostlist("gpu[07-09,11],login1") == ["gpu07", "gpu08", "gpu09", "gpu11", "login1"]
    assert expand_hostlist("vm") == ["vm"]
    assert expand_hostlist("a[1-2]-ib,b3") == ["a1-ib", "a2-ib", "b3"]


def test_torchrun_wins_over_slurm() -> None:
    env = distributed_env({**SLURM, **TORCHRUN})  # torchrun started by srun: the worker's own variables count
    assert (env.rank, env.local_rank, env.world_size, env.master_addr, env.master_port, env.source) == (
        3, 1, 8, "node1", 29400, "torchrun")


def test_slurm_tasks() -> None:
    env = distributed_env(SLURM)
    assert (env.rank, env.local_rank, env.world_size, env.master_addr, env.source) == (5, 1, 8, "gpu07", "slurm")
    other_job = distributed_env({**SLURM, "SLURM_JOB_ID": "123457"})
    assert env.master_port != other_job.master_port  # jobs sharing a node do not collide
    # A requeued job, or the next step of one, does not meet its predecessor's socket (TIME_WAIT).
    requeued = distributed_env({**SLURM, "SLURM_RESTART_COUNT": "1"}).master_port
    next_step = distributed_env({**SLURM, "SLURM_STEP_ID": "1"}).master_port
    assert len({env.master_port, requeued, other_job.master_port}) == 3 and next_step == requeued
    assert env.backend(cuda=False) == "gloo" and env.backend(cuda=True) == "nccl"


def test_submitit_local_tasks_win_over_the_enclosing_allocation() -> None:
    env = distributed_env({**SLURM, **LOCAL})  # a sweep driver's local trial inside its own Slurm job
    assert (env.rank, env.local_rank, env.world_size, env.master_addr, env.source) == (
        1, 1, 2, "127.0.0.1", "submitit-local")
    assert env.master_port != distributed_env({**LOCAL, "SUBMITIT_LOCAL_JOB_ID": "4243"}).master_port


def test_plain_process() -> None:
    assert distributed_env({}).source == "single"


@pytest.mark.parametrize("env, fragment", [
    ({"RANK": "0", "WORLD_SIZE": "2"}, "LOCAL_RANK, MASTER_ADDR, MASTER_PORT missing"),
    ({**TORCHRUN, "RANK": "8"}, "RANK=8 LOCAL_RANK=1 do not fit WORLD_SIZE=8"),
    ({**TORCHRUN, "WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({k: v for k, v in SLURM.items() if k != "SLURM_NTASKS"}, "SLURM_NTASKS missing"),
    ({**SLURM, "SLURM_PROCID": "9"}, "SLURM_PROCID=9 does not fit SLURM_NTASKS=8"),
    ({k: v for k, v in LOCAL.items() if k != "SUBMITIT_LOCAL_JOB_ID"}, "SUBMITIT_LOCAL_JOB_ID missing"),
    ({**LOCAL, "SUBMITIT_LOCAL_GLOBALID": "2"}, "SUBMITIT_LOCAL_GLOBALID=2 does not fit SUBMITIT_LOCAL_NTASKS=2"),
])
def test_incomplete_or_contradictory_is_an_error(env: dict, fragment: str) -> None:
    with pytest.raises(LaunchError, match=fragment):
        distributed_env(env)
