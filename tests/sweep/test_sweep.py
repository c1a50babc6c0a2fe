"""The sweep driver with local trial jobs: outputs, a failing population, and the config checks."""

import csv
import json
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import kssgan
from kssgan_hpc.config import ConfigError, load_config
from kssgan_hpc.config.sweep import SweepConfig
from kssgan_hpc.config.train import GanConfig
from kssgan_hpc.sweep.driver import Sweep
from kssgan_hpc.sweep.space import parametrization


def test_local_sweep_writes_results_best_config_and_tensorboard(sweep_file) -> None:
    path = sweep_file()
    proc = kssgan("sweep", "--config", str(path), timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = Path(yaml.safe_load(path.read_text())["out"])
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["status"] for r in rows] == ["completed"] * 3
    assert all(float(r["objective"]) > 0 and r["job_id"] and float(r["wall_s"]) > 0 for r in rows)
    best = min(rows, key=lambda r: float(r["objective"]))
    assert f"best:        trial {best['trial']}" in proc.stdout
    # best_config.yaml is a scenario file: the tuned values, the full step count, not the trial budget.
    cfg = load_config(GanConfig, out / "best_config.yaml", section="gan")
    assert cfg.lr_g == pytest.approx(float(best["param.lr_g"])) and cfg.adversarial == best["param.adversarial"]
    assert cfg.steps == 1000
    assert json.loads((out / "sweep.json").read_text())["optimizer"] == "TwoPointsDE"
    curve = EventAccumulator(str(out / "tensorboard")).Reload()
    assert [e.step for e in curve.Scalars("sweep/best_so_far")] == [1, 2, 3]
    assert sorted(p.name for p in (out / "tensorboard").iterdir() if p.is_dir()) == [
        "trial-0000", "trial-0001", "trial-0002"]
    trial = EventAccumulator(str(out / "tensorboard" / "trial-0001")).Reload()
    assert "hparam/objective" in trial.Tags()["scalars"]


def test_report_objective(sweep_file) -> None:
    path = sweep_file(budget=1, num_workers=1, objective={"name": "report", "split": "test", "ks": [4],
                                                          "attackers": ["siamese", "lowpass8", "parrot"],
                                                          "probes_per_identity": 1})
    proc = kssgan("sweep", "--config", str(path), timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = next(csv.DictReader((Path(yaml.safe_load(path.read_text())["out"]) / "results.csv").open()))
    privacy, ssim, kid = (float(row[f"metric.{m}"]) for m in
                          ("privacy/worst_rank1_above_1_over_k", "utility/ssim", "realism/kid_sface"))
    assert 0 <= privacy <= 0.75 and -1 <= ssim <= 1
    assert float(row["objective"]) == pytest.approx(privacy + (1 - ssim) + kid)


def test_realism_objective_tells_an_infeasible_trial_the_penalty(sweep_file) -> None:
    # Faces in more than every output: no trial can meet it, so the trial is infeasible, not failed.
    path = sweep_file(budget=1, num_workers=1, failure_penalty=7.0,
                      objective={"name": "realism", "split": "test", "ks": [4], "min_faces_detected": 1.01,
                                 "attackers": ["siamese", "sface", "lowpass8"], "probes_per_identity": 1})
    proc = kssgan("sweep", "--config", str(path), timeout=400)
    row = next(csv.DictReader((Path(yaml.safe_load(path.read_text())["out"]) / "results.csv").open()))
    assert row["status"] == "infeasible", proc.stdout + proc.stderr
    assert float(row["told"]) == 7.0 and float(row["objective"]) == pytest.approx(float(row["metric.realism/kid_sface"]))
    assert "faces detected in" in row["error"] and 0 <= float(row["metric.privacy/worst_rank1"]) <= 1


def test_failing_trials_are_recorded_and_abort_above_the_failure_rate(sweep_file, tmp_path: Path) -> None:
    path = sweep_file(budget=8, trial_overrides=["steps=4", f"siamese={tmp_path / 'missing'}"])
    proc = kssgan("sweep", "--config", str(path), timeout=240)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "above max_failure_rate=0.5: sweep aborted" in proc.stderr and "no complete Siamese" in proc.stderr
    trials = [json.loads(line) for line in (tmp_path / "sweep" / "trials.jsonl").read_text().splitlines()][:-1]
    failed = [t for t in trials if t["status"] == "failed"]
    assert 2 <= len(failed) < 8 and all(t["told"] == 10.0 and "CheckpointError" in t["error"] for t in failed)


def test_resume_refuses_another_configuration(sweep_file) -> None:
    path = sweep_file(budget=1, num_workers=1)
    assert kssgan("sweep", "--config", str(path), timeout=240).returncode == 0
    again = kssgan("sweep", "--config", str(path), timeout=60)
    assert again.returncode == 2 and "holds a sweep already" in again.stderr
    other = kssgan("sweep", "--config", str(path), "--resume", "budget=2", timeout=60)
    assert other.returncode == 2 and "started with another configuration" in other.stderr


@pytest.mark.parametrize("space, fragment", [
    ({"k": {"type": "int", "low": 2, "high": 8}}, "never tuned"),
    ({"cluster.k": {"type": "int", "low": 2, "high": 8}}, "never tuned"),
    ({"lr_x": {"type": "log", "low": 1e-5, "high": 1e-3}}, "unknown key 'lr_x'"),
    ({"lr_g": {"type": "log", "low": 0, "high": 1e-3}}, "log parameter needs low > 0"),
    ({"lr_g": {"type": "uniform", "low": 1, "high": 1}}, "needs low < high"),
    ({"adversarial": {"type": "choice", "values": ["hinge"]}}, "at least two values"),
    ({"adversarial": {"type": "choice", "values": ["hinge", "wgan"]}}, "adversarial='wgan' is invalid"),
])
def test_bad_search_spaces_are_refused(sweep_file, space: dict, fragment: str) -> None:
    path = sweep_file(space=space)
    with pytest.raises(ConfigError, match=fragment):
        Sweep(load_config(SweepConfig, path))


def test_unknown_optimizer_is_refused_with_suggestions(sweep_file) -> None:
    with pytest.raises(ConfigError, match="optimizer='TwoPointDE' is not in nevergrad's registry; did you mean "
                                          "TwoPointsDE"):
        Sweep(load_config(SweepConfig, sweep_file(optimizer="TwoPointDE")))


def test_parametrization_is_seeded_and_typed() -> None:
    cfg = load_config(SweepConfig, overrides=[
        "space.lr={type: log, low: 1.0e-5, high: 1.0e-3}", "space.n={type: int, low: 1, high: 4}",
        "space.kind={type: choice, values: [a, b]}"])
    draws = [[parametrization(cfg.space, seed=3).sample().value for _ in range(1)] for _ in range(2)]
    assert draws[0] == draws[1]
    value = draws[0][0]
    assert 1e-5 <= value["lr"] <= 1e-3 and isinstance(value["n"], int) and value["kind"] in ("a", "b")


class _Planted:
    """A pickle that runs code when loaded: it touches a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_unpickles_only_its_own_untampered_state(sweep_file, tmp_path: Path) -> None:
    """sweep --resume refuses a pickle it did not record, or that others may write (issue 10, item 7)."""
    import os
    import pickle

    path = sweep_file(budget=1, num_workers=1)
    sweep = Sweep(load_config(SweepConfig, path))
    sweep._open(resume=False)
    sweep.save()  # the state as the driver leaves it: an optimizer pickle named in trials.jsonl
    name = json.loads((tmp_path / "sweep" / "trials.jsonl").read_text().splitlines()[-1])["optimizer_state"]
    state = tmp_path / "sweep" / "state" / name
    assert state.stat().st_mode & 0o077 == 0
    original = state.read_bytes()
    marker = tmp_path / "code-ran"

    def resume() -> str:
        proc = kssgan("sweep", "--config", str(path), "--resume", timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        return proc.stderr

    state.write_bytes(pickle.dumps(_Planted(marker)))
    assert "sha256 differs from the one trials.jsonl recorded" in resume()
    assert not marker.exists()
    state.write_bytes(original)
    state.chmod(0o664)
    assert "writable by group or others" in resume()
    state.chmod(0o600)
    if os.getuid() == 0:  # only root can hand the file to another user
        os.chown(state, 12345, -1)
        assert "owned by uid 12345, not by you" in resume()
        os.chown(state, 0, -1)
    restored = Sweep(load_config(SweepConfig, path))
    restored._open(resume=True)
    assert restored.optimizer is not None and not marker.exists()
