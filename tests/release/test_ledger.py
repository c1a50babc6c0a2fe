"""Releases over time: the ledger's invariant, sticky clusters, refusals, withdrawal (release/ledger.py)."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import OPEN_GATE, kssgan, sources

from kssgan_hpc.data.dataset import FaceShards
from kssgan_hpc.release.checks import check_release_clusters
from kssgan_hpc.release.ledger import Ledger


def anonymize(gan_run: Path, demo_data: Path, out: Path, ledger: Path, *more: str, check: bool = True):
    return kssgan("anonymize", f"gan={gan_run}", f"data={demo_data}", f"out={out}", f"ledger={ledger}",
                  "splits=[train]", "images_per_shard=400", *OPEN_GATE, "--no-progress", *more, check=check)


def mapping(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "private" / "mapping.jsonl").read_text().splitlines()]


def clusters_of(ledger: Path) -> list[dict[str, frozenset]]:
    """Per release, cluster id -> the people it released."""
    record = json.loads((ledger / "ledger.json").read_text())
    return [{c["cluster"]: frozenset(c["people"]) for c in r["clusters"]} for r in record["releases"]]


@pytest.fixture(scope="module")
def first(demo_data: Path, gan_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release of the 32 training people at k=4, its ledger beside it."""
    tmp = tmp_path_factory.mktemp("ledger")
    anonymize(gan_run, demo_data, tmp / "r1", tmp / "ledger", "k=4")
    return tmp


def test_the_first_release_forms_clusters_with_slack_and_records_them(first: Path) -> None:
    (release,) = json.loads((first / "ledger" / "ledger.json").read_text())["releases"]
    assert release["k"] == 4 and release["withdrawal_slack"] == 1 and release["out"] == str(first / "r1")
    sizes = sorted(len(c["people"]) for c in release["clusters"])
    assert min(sizes) >= 5 and sum(sizes) == 32  # k + slack people each, every person once
    assert all((first / "ledger" / "clusters" / f"{c['cluster']}.safetensors").is_file() for c in release["clusters"])
    settings = json.loads((first / "r1" / "private" / "settings.json").read_text())
    assert release["secret_seed"] == settings["secret_seed"]
    assert "ledger" not in (first / "r1" / "release" / "manifest.json").read_text()


def test_a_second_release_keeps_the_clusters_and_draws_afresh(first: Path, demo_data: Path, gan_run: Path) -> None:
    frozen = {p.name: p.read_bytes() for p in (first / "ledger" / "clusters").iterdir()}
    anonymize(gan_run, demo_data, first / "r2", first / "ledger", "k=4", "method=kmeans")
    one, two = clusters_of(first / "ledger")
    assert one == two  # sticky: kmeans is not asked, the people keep their clusters
    assert {p.name: p.read_bytes() for p in (first / "ledger" / "clusters").iterdir()} == frozen
    # Nothing per image repeats: each image's cues are drawn afresh (a new secret), from the same pool.
    a, b = ({m["source_index"]: m["cue_source_index"] for m in mapping(first / r)} for r in ("r1", "r2"))
    assert a.keys() == b.keys() and sorted(a.values()) == sorted(b.values())
    assert sum(a[s] != b[s] for s in a) > len(a) / 2
    assert check_release_clusters(first / "r2" / "private")["min_size"] >= 4


@pytest.mark.parametrize("change", [["k=6"], ["method=kmeans", "sticky_clusters=false"]])
def test_a_release_that_breaks_k_over_time_is_refused(first: Path, demo_data: Path, gan_run: Path,
                                                      change: list[str]) -> None:
    before = (first / "ledger" / "ledger.json").read_bytes()
    out = first / f"refused-{change[0]}"
    proc = anonymize(gan_run, demo_data, out, first / "ledger", *change, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "would break k over time" in proc.stderr and "this release" in proc.stderr
    named = set(s["identity"] for s in sources(demo_data))
    assert any(f"{name}:" in proc.stderr for name in named)  # the people it would expose, by name
    assert "r1" in proc.stderr  # and the releases whose clusters they would be intersected with
    assert not (out / "release").exists() and not (out / "private" / "settings.json").exists()
    assert (first / "ledger" / "ledger.json").read_bytes() == before


def test_the_invariant_counts_the_people_shared_over_all_releases(tmp_path: Path) -> None:
    (tmp_path / "ledger.json").write_text(json.dumps({"kind": "ledger", "withdrawn": {}, "releases": [
        {"id": "r1", "k": 2, "clusters": [{"cluster": "c1", "people": ["a", "b", "c"]},
                                          {"cluster": "c2", "people": ["d", "e", "f"]}]},
        {"id": "r2", "k": 3, "clusters": [{"cluster": "c1", "people": ["a", "b", "c"]},
                                          {"cluster": "c2", "people": ["d", "e", "f"]}]}]}))
    ledger = Ledger(tmp_path)
    assert ledger.breaches([(["a", "b", "c"], []), (["d", "e", "f"], [])], 2) == []
    # Regrouped: a's clusters share a, b (2 people), and r2 promised them 3.
    breaches = ledger.breaches([(["a", "b", "d"], []), (["c", "e", "f"], [])], 2)
    assert len(breaches) == 6 and breaches[0].startswith("a: 2 people share all their clusters over r1, r2")
    # Two names found to be one person count once.
    assert ledger.breaches([(["a", "b", "c"], [["b", "c"]]), (["d", "e", "f"], [])], 2)[0].startswith("a: 2 people")
    (tmp_path / "ledger.json").write_text("{")
    with pytest.raises(ValueError, match="ledger.json: not a readable ledger"):
        Ledger(tmp_path)


def test_withdrawal_removes_a_person_and_keeps_everyone_else_at_k(demo_data: Path, gan_run: Path,
                                                                  tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    anonymize(gan_run, demo_data, tmp_path / "r1", ledger, "k=4")
    (clusters,) = clusters_of(ledger)
    uid, people = min(clusters.items(), key=lambda item: len(item[1]))  # a cluster of k + 1 = 5
    leaver, second = sorted(people)[:2]
    theirs = {s["source"] for s in sources(demo_data) if s["identity"] == leaver}
    template = (ledger / "clusters" / f"{uid}.safetensors").read_bytes()
    before = mapping(tmp_path / "r1")

    proc = kssgan("withdraw", f"data={demo_data}", f"ledger={ledger}", f"people=[{leaver}]")
    assert proc.returncode == 0, proc.stderr
    erasure = [json.loads(line) for line in (ledger / "erasures.jsonl").read_text().splitlines()]
    assert [(e["person"], e["release"], e["mapping_lines_removed"]) for e in erasure] == [(leaver, "r1", len(theirs))]
    assert (tmp_path / "r1" / "private" / "erasures.jsonl").is_file()
    after = mapping(tmp_path / "r1")
    assert len(after) == len(before) - len(theirs) and not {m["source_index"] for m in after} & theirs
    assert not {m["cue_source_index"] for m in after} & theirs

    anonymize(gan_run, demo_data, tmp_path / "r2", ledger, "k=4")
    released = mapping(tmp_path / "r2")
    assert len(released) == len(before) - len(theirs) and not {m["source_index"] for m in released} & theirs
    assert len(FaceShards(tmp_path / "r2" / "release", "train")) == len(released)
    assert clusters_of(ledger)[1][uid] == people - {leaver}  # the rest keep their cluster, at k = 4
    assert check_release_clusters(tmp_path / "r2" / "private")["min_size"] >= 4
    # The cluster's face and cue pool stay as first released (a recomputed one would show the leaver).
    record = Ledger(ledger).frozen(uid)
    assert (ledger / "clusters" / f"{uid}.safetensors").read_bytes() != template  # only the sources forgotten
    assert (record["source"] == -1).sum() == len(theirs) and np.isin(record["source"], list(theirs)).sum() == 0
    # What goes missing from release 2's poses is a draw from the pool, not the leaver's own poses
    # (a pool rebuilt without them would show exactly those: benchmarks/releases_over_time.py).
    shown_before = {m["cue_entry"] for m in before if m["ledger_cluster"] == uid}
    missing = shown_before - {m["cue_entry"] for m in released if m["ledger_cluster"] == uid}
    own = set(np.flatnonzero(record["source"] == -1).tolist())
    assert len(missing) == len(theirs) and missing != own

    # A second leaver from that cluster: the 3 left cannot keep k = 4 and are withheld from then on.
    kssgan("withdraw", f"data={demo_data}", f"ledger={ledger}", f"people=[{second}]", check=True)
    proc = anonymize(gan_run, demo_data, tmp_path / "r3", ledger, "k=4")
    assert "3 people withheld" in proc.stderr
    last = json.loads((ledger / "ledger.json").read_text())["releases"][-1]
    assert sorted(last["withheld"]) == sorted(people - {leaver, second})
    assert uid not in {c["cluster"] for c in last["clusters"]}
    refused = kssgan("withdraw", f"data={demo_data}", f"ledger={ledger}", "people=[nobody]")
    assert refused.returncode == 2 and "nobody appear in no release" in refused.stderr
