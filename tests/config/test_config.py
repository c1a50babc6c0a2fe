from pathlib import Path

import pytest

import yaml

from kssgan_hpc.config import ConfigError, PrepConfig, load_config
from kssgan_hpc.config.train import ClusterConfig, GanConfig, SiameseConfig


def test_precedence_defaults_yaml_overrides(tmp_path: Path) -> None:
    yaml_file = tmp_path / "scenario.yaml"
    yaml_file.write_text("prep:\n  resolution: 128\n  workers: 3\n  split:\n    seed: 7\n")
    cfg = load_config(PrepConfig, yaml_file, ["workers=2", "split.train=0.6", "split.val=0.2", "split.test=0.2"],
                      section="prep")
    assert cfg.resolution == 128  # from YAML
    assert cfg.workers == 2  # override beats YAML
    assert cfg.split.seed == 7 and cfg.split.train == 0.6
    assert cfg.images_per_shard == 1000  # default


def test_unknown_key_names_key_and_lists_valid(tmp_path: Path) -> None:
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text("prep:\n  resolutoin: 128\n")
    with pytest.raises(ConfigError) as err:
        load_config(PrepConfig, yaml_file, section="prep")
    assert str(yaml_file) in str(err.value) and "resolutoin" in str(err.value)
    assert "resolution" in str(err.value)  # the valid keys are listed
    with pytest.raises(ConfigError, match="split.sed"):
        load_config(PrepConfig, overrides=["split.sed=1"])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("resolution=abc", "resolution must be int"),
        ("resolution=100", "power of two"),
        ("workers=true", "workers must be a number"),
        ("compression=zstd", "compression='zstd' is invalid"),
        ("split.train=0.9", "sum to 1"),
        ("resolution", "not key=value"),
    ],
)
def test_bad_values_are_clear_errors(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(PrepConfig, overrides=[override])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(PrepConfig, tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("prep: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(PrepConfig, broken, section="prep")


def test_shipped_configs_load() -> None:
    from kssgan_hpc.config.launch import JobConfig
    from kssgan_hpc.config.release import AnonymizeConfig, EvaluateConfig

    stages = {"prep": PrepConfig, "siamese": SiameseConfig, "cluster": ClusterConfig, "gan": GanConfig,
              "anonymize": AnonymizeConfig, "evaluate": EvaluateConfig, "slurm": JobConfig}
    for path in sorted(Path(__file__).parents[2].joinpath("configs").glob("*.yaml")):
        sections = yaml.safe_load(path.read_text())
        assert set(sections) <= set(stages), path
        for section in sections:
            load_config(stages[section], path, section=section)


def test_shipped_sweeps_fit_their_base_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    from kssgan_hpc.config.sweep import SweepConfig
    from kssgan_hpc.sweep.driver import Sweep

    repo = Path(__file__).parents[2]
    monkeypatch.chdir(repo)  # base_config paths are relative to the repository
    sweeps = sorted(repo.joinpath("configs", "sweep").glob("*.yaml"))
    assert sweeps
    for path in sweeps:
        Sweep(load_config(SweepConfig, path))  # checks every key and range against the stage config


def test_scientific_floats_and_error_origin() -> None:
    cfg = load_config(GanConfig, overrides=["engine.initial_loss_scale=1e30", "lr_g=1e-4"])
    assert cfg.engine.initial_loss_scale == 1e30 and cfg.lr_g == 1e-4  # YAML 1.1 reads 1e30 as a string
    with pytest.raises(ConfigError, match=r"^defaults \+ overrides: unknown key 'nope'"):
        load_config(GanConfig, overrides=["steps=2", "nope=1"])


@pytest.mark.parametrize("stage, override, fragment", [
    (GanConfig, "lr_g=.inf", "lr_g=inf is invalid; use a finite number"),
    (GanConfig, "lr_d=nan", "lr_d=nan is invalid; use a finite number"),
    (GanConfig, "w_base=.nan", "w_base=nan is invalid"),
    (GanConfig, "lr_g=-0.001", "lr_g=-0.001 is invalid; use a learning rate > 0"),
    (GanConfig, "lr_d=0", "lr_d=0.0 is invalid"),
    (GanConfig, "w_id_pull=-1", "w_id_pull=-1.0: loss weights must be >= 0"),
    (GanConfig, "beta2=1.0", "beta2=1.0 is invalid"),
    (SiameseConfig, "lr=-1.0", "lr=-1.0, margin=0.5 are invalid"),
    (SiameseConfig, "lr=.inf", "lr=inf is invalid; use a finite number"),
])
def test_values_that_cannot_train_are_refused(stage: type, override: str, fragment: str) -> None:
    # Each of these once passed validation: inf trained to exit 0 with every weight non-finite, a
    # negative learning rate or nan stopped later with a traceback.
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("+", r"\+")):
        load_config(stage, overrides=[override])


def test_misspelt_section_is_refused_not_skipped(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text("siamesee:\n  steps: 5\n  out: elsewhere\n")
    # Before: the section was ignored and the defaults ran (out runs/demo/siamese, 200 steps).
    with pytest.raises(ConfigError, match=r"scenario.yaml: unknown section 'siamesee' \(did you mean 'siamese'\?\)"):
        load_config(SiameseConfig, scenario, section="siamese")
    scenario.write_text("siamese:\n  steps: 5\nslurm:\n  nodes: 2\n")  # every known section is fine
    assert load_config(SiameseConfig, scenario, section="siamese").steps == 5
