"""Radboud Faces: `Rafd<pose>_<id>_<ethnicity>_<gender>_<expression>_<gaze>.jpg`, any folder depth."""

from __future__ import annotations

import re
from pathlib import Path

from data_prep.sources.base import SourceError, SourceListing, SourceRecord, walk_files

EXPRESSIONS = ["angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"]
POSES = ["000", "045", "090", "135", "180"]
GAZES = ["left", "frontal", "right"]
PATTERN = re.compile(
    r"^rafd(?P<pose>\d{3})_(?P<id>\d+)_(?P<ethnicity>[a-z]+)_(?P<gender>[a-z]+)_"
    r"(?P<expression>[a-z]+)_(?P<gaze>[a-z]+)\.(jpe?g|png)$",
    re.IGNORECASE,
)


def list_rafd(root: str | Path) -> SourceListing:
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder of RaFD images")
    records = []
    for path in walk_files(root):
        rel = str(path.relative_to(root))
        match = PATTERN.match(path.name)
        if match is None:
            records.append(SourceRecord(path=rel, identity="", skip="name does not follow the RaFD pattern"))
            continue
        pose, expression, gaze = match["pose"], match["expression"].lower(), match["gaze"].lower()
        bad = [f"{n} '{v}'" for n, v, vocab in (("pose", pose, POSES), ("expression", expression, EXPRESSIONS),
                                                ("gaze", gaze, GAZES)) if v not in vocab]
        records.append(SourceRecord(
            path=rel, identity=f"rafd{int(match['id']):03d}", expression=expression, pose=pose, gaze=gaze,
            skip=f"unknown RaFD {', '.join(bad)}" if bad else None,
        ))
    if not any(r.skip is None for r in records):
        raise SourceError(f"{root}: no file named like Rafd090_01_Caucasian_female_angry_frontal.jpg")
    for record in records:
        if record.skip:
            record.expression = record.pose = record.gaze = None
    vocab = {"expression": EXPRESSIONS, "pose": POSES, "gaze": GAZES, "attributes": []}
    return SourceListing(root=root, records=records, vocab=vocab)
