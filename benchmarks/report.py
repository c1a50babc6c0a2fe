"""The one way benchmark scripts record their figures: machine facts + results, as JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def write_report(path: str | Path, benchmark: str, **fields: Any) -> None:
    import torch

    report = {"benchmark": benchmark, "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
              "cpus": os.cpu_count(), "torch": torch.__version__, **fields}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
