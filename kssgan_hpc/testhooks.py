"""Test hooks, in one place: environment variables that make a run fail or wait at a chosen point.

Tests of signals, kills and non-finite losses must not depend on the machine's speed, so they hold a
run at an exact point and act on an event, never after a pause. Unset (as in any real run), no hook
does anything.

  KSSGAN_INJECT_NAN="<step>,<rank>"   that rank's loss is NaN at that training step
  KSSGAN_TEST_HOLD_AT_STEP=<step>     a fresh (not resumed) training run waits at that step for a stop signal
  KSSGAN_TEST_PREP_GATE=<dir>         a prep worker about to finish a shard touches <dir>/held-<pid> and
  KSSGAN_TEST_PREP_HOLD_AFTER=<n>     waits for <dir>/go (once n shards are complete, default 0)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def nan_injection() -> tuple[int, int] | None:
    """(step, rank) whose loss KSSGAN_INJECT_NAN makes NaN, or None."""
    value = os.environ.get("KSSGAN_INJECT_NAN")
    if not value:
        return None
    step, rank = (int(v) for v in value.split(","))
    return step, rank


def hold_step() -> int | None:
    """The step at which KSSGAN_TEST_HOLD_AT_STEP holds a fresh run, or None."""
    value = os.environ.get("KSSGAN_TEST_HOLD_AT_STEP")
    return int(value) if value else None


def hold_until_stopped(step: int, stop_requested: Callable[[], bool], orphaned: Callable[[], BaseException]) -> None:
    """Wait at `step` until `stop_requested()` (a collective: every rank waits for the same event); if
    the launcher that started this process dies meanwhile, raise `orphaned()`: never outlive it."""
    log.warning("test hook: holding at step %d until a stop signal", step)
    launcher = os.getppid()
    while not stop_requested():
        if os.getppid() != launcher:
            raise orphaned()
        time.sleep(0.5)


def hold_prep_worker(state: Path) -> None:
    """KSSGAN_TEST_PREP_GATE: a prep worker about to finish a shard announces itself and waits for the
    test's go, so a test can kill prep mid-shard on a machine of any speed."""
    gate = os.environ.get("KSSGAN_TEST_PREP_GATE")
    if not gate or len(list(state.glob("*.h5.json"))) < int(os.environ.get("KSSGAN_TEST_PREP_HOLD_AFTER", "0")):
        return
    Path(gate, f"held-{os.getpid()}").touch()
    while not Path(gate, "go").exists():
        time.sleep(0.05)
