"""The data-set layout ``ROOT/<split>/<class>/<image>`` as ``flow_from_directory`` reads it."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from clothopt.data.images import open_regular_file
from clothopt.errors import DataError, NotFound

__all__ = ["IMAGE_EXTENSIONS", "SPLITS", "Dataset", "Split", "file_sha256", "open_dataset"]

# flow_from_directory's white list; anything else in a class folder is not an image to it
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")
SPLITS = ("train", "validation", "test")


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 of a regular file, streamed; anything else (a FIFO would block) is refused."""
    h = hashlib.sha256()
    with open_regular_file(path, "file") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _list_images(class_dir: Path) -> list[Path]:
    # The order of DirectoryIterator: folders sorted by path, each folder's files sorted, so
    # the order (and the fingerprint) is the same on every machine.
    found = []
    for root, _, files in sorted(os.walk(class_dir), key=lambda entry: entry[0]):
        found += [Path(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def _refuse_unreadable_entries(paths: list[Path]) -> None:
    """A broken link or a FIFO with an image's name would crash (or block) hashing and training
    later; name the first one now, in one line."""
    for path in paths:
        if not path.is_file():
            what = "a broken symbolic link" if path.is_symlink() else "not a regular file"
            raise DataError(
                f"{path} is {what} (run `clothopt data check` on the data set for the full list)"
            )


@dataclass(frozen=True)
class Split:
    """One split: image paths and their integer labels (indices into ``Dataset.classes``)."""

    name: str
    root: Path
    classes: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 over (class, relative path, content hash) of every image, in order.

        Stable across machines and copies: it depends on names and bytes, not on mtimes
        or absolute paths.
        """
        h = hashlib.sha256(f"split={self.name}\n".encode())
        for path, label in zip(self.paths, self.labels, strict=True):
            rel = path.relative_to(self.root).as_posix()
            h.update(f"{self.classes[label]}\t{rel}\t{file_sha256(path)}\n".encode())
        return h.hexdigest()

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}


@dataclass(frozen=True)
class Dataset:
    """A data set on disk. Class names and order come from the train split."""

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, Split] = field(repr=False)

    def __getitem__(self, split: str) -> Split:
        try:
            return self.splits[split]
        except KeyError:
            raise NotFound(
                f"data set {self.root} has no {split!r} split (it has: {', '.join(self.splits)})"
            ) from None

    @cached_property
    def fingerprint(self) -> str:
        """One hash for the whole data set: classes and every split's fingerprint."""
        h = hashlib.sha256(("classes=" + ",".join(self.classes) + "\n").encode())
        for name in sorted(self.splits):
            h.update(f"{name}={self.splits[name].fingerprint}\n".encode())
        return h.hexdigest()


def open_dataset(root: str | os.PathLike[str], splits: tuple[str, ...] = SPLITS) -> Dataset:
    """Read the layout of ``root``; every split named must exist and hold images of every
    train class (an empty class would score a zero F1 into every macro average)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise NotFound(f"data directory not found: {root} (fetch it with `clothopt data fetch`)")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise NotFound(f"{root} has no train/ folder: expected DATA/train|validation|test/<class>/")
    classes = tuple(sorted(d.name for d in train_dir.iterdir() if d.is_dir()))
    if len(classes) < 2:
        raise DataError(f"{train_dir} must hold at least two class folders, found {len(classes)}")
    result: dict[str, Split] = {}
    for name in splits:
        split_dir = root / name
        if not split_dir.is_dir():
            raise NotFound(f"data set {root} has no {name}/ split")
        present = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
        missing = [c for c in classes if c not in present]
        extra = [c for c in present if c not in classes]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"not in train: {', '.join(extra)}")
            raise DataError(f"classes of {name}/ differ from train/: {'; '.join(parts)}")
        paths: list[Path] = []
        labels: list[int] = []
        for label, cls in enumerate(classes):
            images = _list_images(split_dir / cls)
            if not images:
                raise DataError(
                    f"class {cls!r} of the {name} split has no images ({split_dir / cls}): "
                    "every class needs images in every split (run `clothopt data check`)"
                )
            paths.extend(images)
            labels.extend([label] * len(images))
        _refuse_unreadable_entries(paths)
        result[name] = Split(name, split_dir, classes, tuple(paths), np.asarray(labels, np.int64))
    return Dataset(root, classes, result)
