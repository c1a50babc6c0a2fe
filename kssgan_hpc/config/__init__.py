"""Typed stage configs; see core.load_config for the precedence rules."""

from kssgan_hpc.config.core import ConfigError, dump_yaml, from_dict, load_config, to_dict
from kssgan_hpc.config.prep import AlignConfig, PrepConfig, SplitConfig

__all__ = [
    "AlignConfig",
    "ConfigError",
    "PrepConfig",
    "SplitConfig",
    "dump_yaml",
    "from_dict",
    "load_config",
    "to_dict",
]
