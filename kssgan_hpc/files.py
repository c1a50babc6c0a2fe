"""Atomic writes, in one place: every file kssgan writes appears whole or not at all.

A writer writes a temp file beside the target (a name unique to this host, process and call, so two
writers never share one), fsyncs it and renames it over the target: a reader sees the old file or
the new one, never half of either. A temp file whose writer died is found by `stale_temp_files`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kssgan_hpc.errors import InputError


def temp_path(path: str | Path) -> Path:
    """A temp name beside `path`, unique to this writer: `.{name}.tmp-{host}-{pid}-{random}`. Two writers of
    one file (array tasks on two nodes, an orphaned worker and a rerun) never share a temp file."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")


def stale_temp_files(path: str | Path) -> list[Path]:
    """Temp files of `path` whose writer is gone: written on this host by a process that no longer runs
    (those of live writers, or of other hosts, are left alone)."""
    path = Path(path)
    host = socket.gethostname()
    stale = []
    for tmp in path.parent.glob(f".{path.name}.tmp*"):
        parts = tmp.name.rsplit(".tmp", 1)[1].lstrip("-").rsplit("-", 2)
        if len(parts) != 3:
            stale.append(tmp)  # an older writer's name: no owner to ask
            continue
        tmp_host, pid, _ = parts
        if tmp_host == host and pid.isdigit() and not _alive(int(pid)):
            stale.append(tmp)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_file(path: str | Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yields a temp path to write `path` with any writer (safetensors, torch.save, PIL); on success
    it is fsynced and renamed onto `path`, on an error removed. The temp name ends in `path`'s suffix,
    for writers that choose a format by it."""
    path = Path(path)
    tmp = temp_path(path)
    tmp = tmp.with_name(tmp.name + path.suffix)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as err:
        if err.filename:
            raise
        # A write's ENOSPC names no file: name the one being written (the CLI's one line shows it).
        raise OSError(err.errno, err.strerror, str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o666) -> None:
    """Write `data` atomically; `mode` (before the umask) e.g. 0o600 for a file only its owner may read."""
    with atomic_output(path) as tmp:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as fh:
            fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) or fail at once: two writers of one
    shared record (a ledger) must not interleave their read-check-write. `what` names the holder's
    work in the error."""
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{path}: locked by another process ({what}); wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
