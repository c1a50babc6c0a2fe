"""Ingesters, one per source layout; each returns a SourceListing."""

from __future__ import annotations

from pathlib import Path

from data_prep.sources.base import SourceError, SourceListing, SourceRecord
from data_prep.sources.celeba import list_celeba
from data_prep.sources.demo import list_demo
from data_prep.sources.folder import list_folder, list_photos
from data_prep.sources.rafd import list_rafd


def list_source(source: str, root: str | Path | None) -> SourceListing:
    """List the inputs of `source` ('folder', 'photos', 'rafd', 'celeba' or 'demo') under `root`."""
    if source == "demo":
        return list_demo()
    if root is None:
        raise SourceError(f"source '{source}' needs an input folder: --input PATH (or input=PATH)")
    listers = {"folder": list_folder, "photos": list_photos, "rafd": list_rafd, "celeba": list_celeba}
    if source not in listers:
        raise SourceError(f"unknown source '{source}'; use one of folder, photos, rafd, celeba, demo")
    return listers[source](root)


__all__ = ["SourceError", "SourceListing", "SourceRecord", "list_source"]
