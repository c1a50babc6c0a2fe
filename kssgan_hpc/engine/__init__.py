"""One small engine interface over Accelerate and DeepSpeed (see base.Engine)."""

from kssgan_hpc.engine.base import Engine, EngineError, build_engine

__all__ = ["Engine", "EngineError", "build_engine"]
