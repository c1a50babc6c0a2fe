"""The `kssgan` command as a user meets it."""

from pathlib import Path

import yaml

from helpers import kssgan

DEMO = str(Path(__file__).parents[1] / "configs" / "demo.yaml")


def test_help_lists_stages() -> None:
    proc = kssgan("--help", check=True)
    assert "prep" in proc.stdout and "inspect" in proc.stdout


def test_dry_run_prints_resolved_config(tmp_path: Path) -> None:
    proc = kssgan("prep", "--config", DEMO, "--out", str(tmp_path), "--dry-run",
                  "split.seed=4", check=True)
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["resolution"] == 64 and resolved["split"]["seed"] == 4 and resolved["out"] == str(tmp_path)
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_bad_override_is_a_clear_error(tmp_path: Path) -> None:
    proc = kssgan("prep", "--out", str(tmp_path), "resolution=300")
    assert proc.returncode == 2 and "resolution=300 is invalid" in proc.stderr
    proc = kssgan("prep", "--config", DEMO, "colour=red")
    assert proc.returncode == 2 and "configs/demo.yaml + overrides: unknown key 'colour'" in proc.stderr


def test_demo_prep_and_inspect_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "data"
    prep = kssgan("prep", "--config", DEMO, "--out", str(out), "--resolution", "32",
                  "--no-progress", check=True)
    assert "400 images of 40 people" in prep.stdout
    inspect = kssgan("inspect", str(out), check=True)
    assert "all checksums match" in inspect.stdout and (out / "contact_sheet.png").is_file()


def test_overrides_may_follow_flags() -> None:
    proc = kssgan("train", "gan", "--config", DEMO, "--dry-run", "steps=3", "engine.precision=fp32", check=True)
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["steps"] == 3 and resolved["engine"]["precision"] == "fp32"
    assert kssgan("inspect", "somewhere", "colour=red").returncode == 2  # inspect takes no overrides
