"""CelebA: identity_CelebA.txt plus, when present, landmarks, 40 attributes and the eval partition.

Images are looked for in img_align_celeba/ (with list_landmarks_align_celeba.txt), then
img_celeba/ (with list_landmarks_celeba.txt), then the root itself.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.sources.base import SourceError, SourceListing, SourceRecord

PARTITIONS = {"0": "train", "1": "val", "2": "test"}


def _read_table(path: Path, columns: int | None, header: bool) -> tuple[list[str], dict[str, list[str]]]:
    """Read a CelebA list file: optional count line + header line, then `<image> <values…>` rows."""
    lines = path.read_text().splitlines()
    names: list[str] = []
    if header:
        if len(lines) < 2:
            raise SourceError(f"{path}: expected a count line and a header line")
        names = lines[1].split()
        lines = lines[2:]
        columns = len(names)
    rows: dict[str, list[str]] = {}
    for number, line in enumerate(lines, start=3 if header else 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != columns + 1:
            raise SourceError(f"{path}:{number}: expected {columns + 1} fields, got {len(parts)}")
        rows[parts[0]] = parts[1:]
    return names, rows


def list_celeba(root: str | Path) -> SourceListing:
    root = Path(root)
    identity_file = root / "identity_CelebA.txt"
    if not identity_file.is_file():
        raise SourceError(f"{identity_file}: missing; a CelebA root holds identity_CelebA.txt")
    _, identities = _read_table(identity_file, 1, header=False)

    for folder, landmark_name in (("img_align_celeba", "list_landmarks_align_celeba.txt"),
                                  ("img_celeba", "list_landmarks_celeba.txt")):
        if (root / folder).is_dir():
            image_dir = root / folder
            landmark_files = [root / landmark_name]
            break
    else:
        image_dir = root
        landmark_files = [root / "list_landmarks_align_celeba.txt", root / "list_landmarks_celeba.txt"]
    landmarks: dict[str, list[str]] = {}
    for path in landmark_files:
        if path.is_file():
            _, landmarks = _read_table(path, 10, header=True)
            break
    attr_names: list[str] = []
    attributes: dict[str, list[str]] = {}
    if (root / "list_attr_celeba.txt").is_file():
        attr_names, attributes = _read_table(root / "list_attr_celeba.txt", None, header=True)
    partitions: dict[str, list[str]] = {}
    if (root / "list_eval_partition.txt").is_file():
        _, partitions = _read_table(root / "list_eval_partition.txt", 1, header=False)

    records = []
    for image in sorted(identities):
        path = image_dir / image
        record = SourceRecord(path=str(path.relative_to(root)), identity=f"celeba{identities[image][0]}")
        if not path.is_file():
            record.skip = "listed in identity_CelebA.txt but missing"
        if image in landmarks:
            xy = [float(v) for v in landmarks[image]]
            # CelebA order: lefteye, righteye, nose, leftmouth, rightmouth (image left first), as ours.
            record.landmarks = [xy[i:i + 2] for i in range(0, 10, 2)]
        if image in attributes:
            record.attributes = [1 if v == "1" else 0 for v in attributes[image]]
        if image in partitions:
            record.partition = PARTITIONS.get(partitions[image][0])
        records.append(record)
    if not records:
        raise SourceError(f"{identity_file}: lists no images")
    vocab = {"expression": [], "pose": [], "gaze": [], "attributes": attr_names}
    return SourceListing(root=root, records=records, vocab=vocab)
