"""Slurm jobs through submitit: training runs as checkpointable, self-requeueing jobs (launch/submit.py).

The launcher's environment itself (torchrun, Slurm tasks, submitit) is read by kssgan_hpc.distributed.
"""
