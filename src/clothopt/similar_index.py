"""Reading a similar-item index file (:mod:`clothopt.similar` writes it), which is not trusted.

An index file may come from anyone, and the HTML page inlines the files it names.
:func:`load_index` refuses (one line) a file that is not a readable index of this format,
metadata of the wrong shape, and any stored path that is absolute, climbs out with ``..`` or
resolves (through symbolic links) outside the catalogue folder, before any catalogue file is
read. An index whose model or catalogue changed since it was built is refused too: the
catalogue's fingerprint (:func:`clothopt.similar.catalogue_fingerprint`) hashes every image's
bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.data import UnusableImage
from clothopt.data.images import NO_SUCH_FILE, open_regular_file
from clothopt.errors import DataError, InvalidArgument, ModelError, NotFound
from clothopt.similar import (
    EMBEDDINGS,
    INDEX_FORMAT,
    SimilarIndex,
    catalogue_files,
    catalogue_fingerprint,
)
from clothopt.vector_index import set_nprobe

if TYPE_CHECKING:
    import faiss

__all__ = ["load_index"]

# what load_index needs from the metadata, and of what type (JSON from anyone's file)
_META_TYPES: dict[str, type | tuple[type, ...]] = {
    "format": int,
    "model": str,
    "model_sha256": str,
    "catalogue": str,
    "catalogue_fingerprint": str,
    "embedding": str,
    "class_weight": (int, float),
    "temperature": (int, float),
    "dims": int,
    "count": int,
}


def load_index(
    path: str | os.PathLike[str],
    model_path: str | os.PathLike[str] | None = None,
    check_catalogue: bool = True,
    nprobe: int | None = None,
) -> SimilarIndex:
    """Read an index file; refuse it (one line) when it is not an index, stale or unsafe.

    ``nprobe`` overrides the one an IVF index was built with (a Flat index refuses it).

    Not an index (:class:`DataError`): not a regular file, not a readable ``.npz`` of this
    format, metadata of the wrong shape, or a stored path that leaves the catalogue folder
    (absolute, ``..``, or a link resolving outside): checked before any catalogue file is
    read. Stale: the model file (``model_path``, else the one it was built with) is not the one
    it was built with, or (``check_catalogue``) an image under the catalogue folder was added,
    removed or changed since (its bytes are hashed).
    """
    path = Path(path).expanduser()
    meta, paths, index = _read_index_file(path)
    root = Path(meta["catalogue"])
    _check_paths(path, root, paths)
    model = Path(model_path).expanduser() if model_path is not None else Path(meta["model"])
    try:
        with open_regular_file(model, "model") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
    except UnusableImage as exc:
        if exc.detail == NO_SUCH_FILE:
            raise NotFound(f"model not found: {model}") from None
        raise ModelError(f"cannot read model {model}: {exc.detail}") from None
    if digest != meta["model_sha256"]:
        raise DataError(
            f"index {path} is stale: model {model} is not the one it was built with; "
            "rebuild it with `clothopt index build`"
        )
    if check_catalogue:
        # links out were left out and reported by index build: not again on every load
        images = catalogue_files(root, warn=False)[0] if root.is_dir() else None
        listed = {p.relative_to(root).as_posix() for p in images or ()}
        if (
            images is None
            or not listed.issuperset(paths)
            or catalogue_fingerprint(root, images) != meta["catalogue_fingerprint"]
        ):
            raise DataError(
                f"index {path} is stale: catalogue {root} changed since it was built; "
                "rebuild it with `clothopt index build`"
            )
    if nprobe is not None:
        set_nprobe(index, nprobe)  # the user's: its mistakes are the user's (InvalidArgument)
    elif meta.get("nprobe") is not None:
        try:
            set_nprobe(index, meta["nprobe"])
        except InvalidArgument:
            raise DataError(
                f"{path} is not a readable similar-item index (its nprobe "
                f"{meta['nprobe']!r} does not fit its faiss index)"
            ) from None
    return SimilarIndex(index, paths, meta, path)


def _read_index_file(path: Path) -> tuple[dict[str, Any], list[str], faiss.Index]:
    """The metadata, paths and faiss index of an index file, each checked for shape."""
    import faiss

    def refuse(reason: str) -> DataError:
        return DataError(f"{path} is not a readable similar-item index ({reason})")

    try:
        fh = open_regular_file(path, "index")
    except UnusableImage as exc:
        if exc.detail == NO_SUCH_FILE:
            raise NotFound(f"index not found: {path}") from None
        raise refuse(exc.detail) from None
    try:
        with fh, np.load(fh, allow_pickle=False) as npz:
            raw_meta, raw_paths, blob = npz["meta"], npz["paths"], npz["index"]
        meta = json.loads(str(raw_meta[()]))
    except Exception as exc:  # zipfile, numpy and json each raise their own
        text = str(exc).strip()
        raise refuse(text.splitlines()[0] if text else type(exc).__name__) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("format"), int):
        raise refuse("no format in its metadata")
    if meta["format"] != INDEX_FORMAT:
        raise DataError(
            f"{path} is a similar-item index of format {meta['format']}; this clothopt reads "
            f"format {INDEX_FORMAT}: rebuild it with `clothopt index build`"
        )
    for key, kind in _META_TYPES.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise refuse(f"metadata {key!r} is missing or not a {_type_name(kind)}")
    if meta["embedding"] not in EMBEDDINGS:
        raise refuse(f"unknown embedding {meta['embedding']!r}")
    if not (0 <= meta["class_weight"] <= 1 and 0 < meta["temperature"] < math.inf):
        raise refuse("its embedding's class weight or temperature is out of range")
    if raw_paths.ndim != 1 or raw_paths.dtype.kind != "U":
        raise refuse("its paths are not a list of strings")
    if not (isinstance(blob, np.ndarray) and blob.dtype == np.uint8 and blob.ndim == 1):
        raise refuse("its faiss index is not a byte array")
    try:
        index = faiss.deserialize_index(blob)
    except Exception as exc:  # faiss raises RuntimeError with its C++ message
        text = str(exc).strip()
        raise refuse(f"faiss: {text.splitlines()[0] if text else type(exc).__name__}") from None
    paths = [str(p) for p in raw_paths]
    if not index.ntotal == len(paths) == meta["count"] or index.d != meta["dims"]:
        raise refuse(
            f"inconsistent: {index.ntotal} vectors of {index.d} dims, {len(paths)} paths, "
            f"metadata {meta['count']} of {meta['dims']}"
        )
    for key in ("catalogue", "model"):
        if not os.path.isabs(meta[key]) or "\x00" in meta[key]:
            raise refuse(f"its {key} {meta[key]!r} is not an absolute path")
    if meta.get("nprobe") is not None and (
        not isinstance(meta["nprobe"], int) or isinstance(meta["nprobe"], bool)
    ):
        raise refuse("metadata 'nprobe' is not a whole number")
    return meta, paths, index


def _type_name(kind: type | tuple[type, ...]) -> str:
    return "number" if isinstance(kind, tuple) else {int: "whole number", str: "string"}[kind]


def _check_paths(index_path: Path, root: Path, paths: Sequence[str]) -> None:
    """Every stored path must name a file inside ``root``: relative, no ``..``, and resolving
    (through any link) inside it. Only names are looked at, and links; no file is opened."""
    real_root = root.resolve()
    folders: dict[str, bool] = {}  # per folder: resolved once (3,068 paths: 0.33 s -> 0.02 s)
    for rel in paths:
        if _path_leaves(rel, root, real_root, folders):
            raise DataError(
                f"index {index_path} is refused: its stored path {rel!r} is not inside the "
                f"catalogue folder {root}; an index names files of its catalogue only"
            )


def _path_leaves(rel: str, root: Path, real_root: Path, folders: dict[str, bool]) -> bool:
    if not rel or "\x00" in rel:
        return True
    if os.path.isabs(rel) or any(part in ("", ".", "..") for part in rel.split("/")):
        return True
    # no ".." left: the path can only leave through a link, in a folder or the file itself
    folder, _, _ = rel.rpartition("/")
    try:
        if folder not in folders:
            folders[folder] = (root / folder).resolve().is_relative_to(real_root)
        if not folders[folder]:
            return True
        full = root / rel
        return full.is_symlink() and not full.resolve().is_relative_to(real_root)
    except (OSError, RuntimeError):  # a link loop: not a file inside the catalogue
        return True
