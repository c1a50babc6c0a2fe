"""Output folders know what wrote them, so no command fills or overwrites another's artefacts.

Every command that writes a folder claims it first (`claim_folder`): a new or empty folder gets a
marker naming its kind; a folder of the same kind is continued (resume); a folder of another kind,
or a non-empty folder without a marker, is refused before anything is written.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from kssgan_hpc import __version__
from kssgan_hpc.errors import InputError

KINDS = ("data", "siamese", "gan", "clusters", "release", "report", "sweep", "ledger")
MARKER = ".kssgan-folder.json"


class FolderError(InputError):
    """An output folder belongs to another kind of artefact, or is not empty and not ours."""


def folder_kind(path: str | Path) -> str | None:
    """The kind recorded in a folder's marker (None: no marker)."""
    marker = Path(path) / MARKER
    try:
        return json.loads(marker.read_text())["kind"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FolderError(f"{marker}: unreadable folder marker: {err}") from None


def check_writable(folder: Path) -> None:
    """Refuse a folder this process cannot write (a read-only mount, no permission) before any work."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FolderError(f"{folder}: cannot write here (read-only file system or no permission)")


def claim_folder(path: str | Path, kind: str) -> Path:
    """Make `path` a `kind` folder, or check that it is one; refuse anything else (FolderError)."""
    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FolderError(f"{path}: is a file; a {kind} output must be a folder")
    found = folder_kind(path) if path.is_dir() else None
    if found == kind:
        check_writable(path)
        return path
    if found is not None:
        raise FolderError(f"{path}: is a {found} folder; refusing to write {kind} output into it (use another out)")
    if path.is_dir() and any(path.iterdir()):
        raise FolderError(f"{path}: not empty and not made by kssgan; refusing to write {kind} output into it "
                          "(use a new or empty folder)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FolderError(f"{path}: cannot create the output folder: {err.strerror or err}") from None
    check_writable(path)
    record = {"kind": kind, "created_by": f"kssgan-hpc {__version__}", "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    # Write then link: the marker appears whole, and of two processes claiming at once (array tasks)
    # exactly one creates it; the other finds it and checks the kind.
    tmp = path / f".{MARKER}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.write_text(json.dumps(record) + "\n")
    try:
        os.link(tmp, path / MARKER)
    except FileExistsError:
        tmp.unlink()
        return claim_folder(path, kind)
    tmp.unlink()
    return path


def claim_file(path: str | Path, kind: str) -> Path:
    """A file output (clusters.json): its folder must not be a folder of another kind, and an existing
    file is replaced only when it is a `kind` file that kssgan wrote (its JSON says so)."""
    path = Path(path)
    if path.is_dir():
        raise FolderError(f"{path}: is a folder; give the {kind} file's path (e.g. {path / (kind + '.json')})")
    found = folder_kind(path.parent) if path.parent.is_dir() else None
    if found is not None and found != kind:
        raise FolderError(f"{path}: inside a {found} folder; refusing to write a {kind} file there")
    if path.exists():
        try:
            ours = json.loads(path.read_text()).get("kind") == kind
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise FolderError(f"{path}: exists and is not a {kind} file written by kssgan; refusing to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FolderError(f"{path.parent}: cannot create the output folder: {err.strerror or err}") from None
    check_writable(path.parent)
    return path
