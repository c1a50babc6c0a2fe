"""From a launcher's environment (torchrun, Slurm/srun, submitit) to torch.distributed settings."""

from kssgan_hpc.launch.env import DistEnv, LaunchError, apply_distributed_env, distributed_env, expand_hostlist

__all__ = ["DistEnv", "LaunchError", "apply_distributed_env", "distributed_env", "expand_hostlist"]
