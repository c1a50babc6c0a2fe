"""Check a prepped dataset (every checksum, every count) and draw a contact sheet of samples."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from kssgan_hpc.data.shards import SPLITS, check_shard, load_manifest, open_shard
from kssgan_hpc.files import atomic_output

log = logging.getLogger(__name__)


@dataclass
class InspectReport:
    root: Path
    manifest: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    """One line per bad shard: its name and what is wrong."""
    images: dict[str, int] = field(default_factory=dict)
    identities: dict[str, Counter] = field(default_factory=dict)
    """split -> identity id -> images."""
    expressions: dict[str, Counter] = field(default_factory=dict)
    """split -> expression name ('unknown' for -1) -> images."""

    @property
    def ok(self) -> bool:
        return not self.problems


def inspect_dataset(root: str | Path) -> InspectReport:
    """Verify every shard against the manifest and count images per split, identity and expression."""
    root = Path(root)
    manifest = load_manifest(root)
    root = root if root.is_dir() else root.parent
    report = InspectReport(root=root, manifest=manifest)
    expressions = manifest["vocab"].get("expression", [])
    for split in SPLITS:
        report.images[split] = 0
        report.identities[split] = Counter()
        report.expressions[split] = Counter()
    for shard in manifest["shards"]:
        problem = check_shard(root, shard, manifest, full=True)
        if problem is not None:
            report.problems.append(problem.removeprefix(f"{root}/"))
            continue
        with open_shard(root / shard["name"]) as f:
            count = f["images"].shape[0]
            identity = f["identity"][:]
            expression = f["expression"][:]
        split = shard["split"]
        report.images[split] += count
        report.identities[split].update(identity.tolist())
        report.expressions[split].update(expressions[e] if e >= 0 else "unknown" for e in expression.tolist())
    return report


def write_contact_sheet(report: InspectReport, path: str | Path, *, identities: int = 8, per_identity: int = 6,
                        tile: int = 96) -> Path:
    """A grid: per split, a few identities (rows) x a few of their images. Shows ORIGINAL faces."""
    manifest = report.manifest
    rows: list[tuple[str, list[np.ndarray]]] = []
    bad = {p.split(":")[0] for p in report.problems}
    for split in SPLITS:
        shards = [s for s in manifest["shards"] if s["split"] == split and s["name"] not in bad]
        wanted = sorted(report.identities[split])[:identities]
        found: dict[int, list[np.ndarray]] = {i: [] for i in wanted}
        for shard in shards:
            with open_shard(report.root / shard["name"]) as f:
                ids = f["identity"][:]
                for local in np.flatnonzero(np.isin(ids, wanted)):
                    bucket = found[int(ids[local])]
                    if len(bucket) < per_identity:
                        bucket.append(f["images"][local])
        rows.extend((f"{split} id {i}", found[i]) for i in wanted)
    label_width = 110
    sheet = Image.new("RGB", (label_width + per_identity * tile, max(len(rows), 1) * tile), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for r, (label, images) in enumerate(rows):
        draw.text((6, r * tile + tile // 2 - 6), label, fill=(230, 230, 230))
        for c, image in enumerate(images):
            face = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).convert("RGB")
            sheet.paste(face.resize((tile, tile), Image.BILINEAR), (label_width + c * tile, r * tile))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        sheet.save(tmp)
    return path
