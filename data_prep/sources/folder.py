"""`<root>/<identity>/<image>`: one folder per person."""

from __future__ import annotations

from pathlib import Path

from data_prep.sources.base import SourceError, SourceListing, SourceRecord, is_image_name, walk_files


def list_folder(root: str | Path) -> SourceListing:
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder (expected <root>/<identity>/<image>)")
    records = []
    for path in walk_files(root):
        rel = path.relative_to(root)
        record = SourceRecord(path=str(rel), identity=rel.parts[0])
        if len(rel.parts) == 1:
            record.identity = ""
            record.skip = "not inside an identity folder"
        elif not is_image_name(path.name):
            record.skip = f"unsupported file type '{path.suffix or path.name}'"
        records.append(record)
    if not any(r.skip is None for r in records):
        raise SourceError(f"{root}: no images found in <root>/<identity>/<image> layout")
    return SourceListing(root=root, records=records)


def list_photos(root: str | Path) -> SourceListing:
    """Any tree of photos, nobody named (identity ""): who is who comes from the faces (align.faces=all)."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder of photos")
    records = [SourceRecord(path=str(path.relative_to(root)), identity="",
                            skip=None if is_image_name(path.name) else f"unsupported file type '{path.suffix or path.name}'")
               for path in walk_files(root)]
    if not any(r.skip is None for r in records):
        raise SourceError(f"{root}: no images found")
    return SourceListing(root=root, records=records)
