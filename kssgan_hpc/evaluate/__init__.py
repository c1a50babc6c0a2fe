"""Measures of a de-identified set: realism (KID) and, with the evaluation stage, re-identification."""

from kssgan_hpc.evaluate.kid import kernel_inception_distance

__all__ = ["kernel_inception_distance"]
