"""Hyperparameter populations: nevergrad asks, submitit runs each trial as a job, the driver tells."""
