"""Output folders know what wrote them, so no command fills or overwrites another's artefacts.

Every command that writes a folder claims it first (`claim_folder`): a new or empty folder gets a
marker naming its kind; a folder of the same kind is continued (resume); a folder of another kind,
or a non-empty folder without a marker, is refused before anything is written.

One writer at a time: under the `kssgan` commands and Slurm jobs (`hold_writer_locks`), a claim also
takes the folder's writer lock (an `flock`, which the kernel drops when its holder dies, and which
NFS, Lustre mounted with `flock` and GPFS carry across nodes) for the rest of the process. The
processes of one run share it by design: the ranks of a torchrun or Slurm step, the tasks of a prep
job array (`writer_group`); a second run is refused in one line naming the holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import time
from pathlib import Path

from kssgan_hpc import __version__
from kssgan_hpc.errors import InputError

KINDS = ("data", "siamese", "gan", "clusters", "release", "report", "sweep", "ledger")
MARKER = ".kssgan-folder.json"
WRITER_LOCK = ".kssgan-writer.lock"
"""flock'ed by every process of the run writing the folder; holds the first one's record (who)."""

_locking = False
_held: dict[str, int] = {}  # lock file (resolved) -> the descriptor this process holds it by


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


def hold_writer_locks() -> None:
    """From now on every claim in this process also takes its output's writer lock (the CLI and the
    Slurm jobs call this; library callers such as tests and notebooks are not locked out by it)."""
    global _locking
    _locking = True


def writer_group() -> str:
    """Which processes write one output together: an explicit KSSGAN_WRITER_GROUP, the tasks of one
    Slurm job array, the ranks of one torch.distributed run (its rendezvous), the tasks of one Slurm
    step; otherwise this process alone."""
    env = os.environ
    if env.get("KSSGAN_WRITER_GROUP"):
        return env["KSSGAN_WRITER_GROUP"]
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"slurm-array-{env['SLURM_ARRAY_JOB_ID']}"
    if env.get("MASTER_ADDR") and env.get("MASTER_PORT") and env.get("WORLD_SIZE"):
        return f"ranks-{env['MASTER_ADDR']}:{env['MASTER_PORT']}-{env.get('TORCHELASTIC_RUN_ID', '')}"
    if env.get("SLURM_JOB_ID") and env.get("SLURM_STEP_ID"):
        return f"slurm-step-{env['SLURM_JOB_ID']}.{env['SLURM_STEP_ID']}"
    return f"process-{socket.gethostname()}-{os.getpid()}"


def take_writer_lock(lock: Path, output: Path) -> None:
    """Hold `lock` for `output` for the rest of this process, shared with its writer group; refuse
    (FolderError) while another group holds it. A no-op unless hold_writer_locks() was called."""
    key = str(lock.resolve())
    if not _locking or key in _held:
        return
    group = writer_group()
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # Exclusive only to check and record: then shared, so the rest of the group can join.
        # Joiners and newcomers both come through this exclusive step, one at a time.
        with open(lock.with_name(lock.name + ".gate"), "a") as gate:
            fcntl.flock(gate.fileno(), fcntl.LOCK_EX)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                if holder.get("group") != group:
                    raise FolderError(
                        f"{output}: another kssgan is writing it (pid {holder.get('pid', '?')} on "
                        f"{holder.get('host', '?')} since {holder.get('since', '?')}); wait for it to end or use "
                        "another output") from None
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            else:
                record = {"group": group, "host": socket.gethostname(), "pid": os.getpid(),
                          "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
                fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    _held[key] = fd


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


def claim_folder(path: str | Path, kind: str, lock: bool = True) -> Path:
    """Make `path` a `kind` folder, or check that it is one; refuse anything else (FolderError). With
    `lock`, also take its writer lock (see the module's docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FolderError(f"{path}: is a file; a {kind} output must be a folder")
    found = folder_kind(path) if path.is_dir() else None
    if found == kind:
        return _claimed(path, lock)
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
        return claim_folder(path, kind, lock)
    tmp.unlink()
    return _claimed(path, lock)


def _claimed(path: Path, lock: bool) -> Path:
    """A folder of our kind: writable, and (with `lock`) ours to write until this process ends."""
    check_writable(path)
    if lock:
        take_writer_lock(path / WRITER_LOCK, path)
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
    take_writer_lock(path.with_name(f".{path.name}.writer.lock"), path)
    return path
