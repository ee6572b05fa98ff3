"""Check a data set folder: decode every image and report what would break training.

Unlike :func:`clothopt.data.open_dataset`, which stops at the first problem, :func:`check`
walks the whole tree and reports everything it finds; it never raises on a broken data set.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from clothopt.data.images import UnusableImage, default_threads, load_image
from clothopt.data.layout import IMAGE_EXTENSIONS, SPLITS
from clothopt.errors import NotFound
from clothopt.reports.render import format_table

__all__ = ["PROBLEM_KINDS", "WARNING_KINDS", "CheckReport", "Problem", "check"]

PROBLEM_KINDS = (
    "unreadable",
    "truncated",
    "too-large",
    "broken-link",
    "not-an-image",
    "class-mismatch",
    "missing-split",
    "empty-class",
)
# flow_from_directory skips these files, so they are worth knowing about but harmless
WARNING_KINDS = frozenset({"not-an-image"})


class Problem(NamedTuple):
    path: Path
    kind: str
    detail: str


@dataclass
class CheckReport:
    """What :func:`check` found. ``counts[split][class]`` is the number of readable images."""

    root: Path
    classes: tuple[str, ...]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.kind not in WARNING_KINDS]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.kind in WARNING_KINDS]

    def format(self) -> str:
        """A plain-text table (class × split, with totals), the problems, and a verdict."""
        extra = sorted({c for n in self.counts.values() for c in n} - set(self.classes))
        rows: list[dict[str, object]] = []
        for cls in [*self.classes, *extra]:  # a split without the class shows "-"
            row: dict[str, object] = {
                "class": cls if cls in self.classes else f"{cls} (not in train)"
            }
            row.update({s: self.counts.get(s, {}).get(cls) for s in SPLITS})
            rows.append(row)
        total: dict[str, object] = {"class": "total"}
        total.update(
            {s: sum(self.counts[s].values()) if s in self.counts else None for s in SPLITS}
        )
        rows.append(total)
        for row in rows:
            row["total"] = sum(n for n in row.values() if isinstance(n, int))

        out = [f"data set {self.root}", format_table(rows, ["class", *SPLITS, "total"])]
        if self.problems:
            out.append("")
            out.append(f"problems ({len(self.problems)}):")
            kind_w = max(len(p.kind) for p in self.problems)
            for p in self.problems:
                out.append(f"  {p.kind.ljust(kind_w)}  {self._rel(p.path)}: {p.detail}")
        out.append("")
        out.append(self._verdict())
        return "\n".join(out)

    def _rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix() or "."
        except ValueError:
            return str(path)

    def _verdict(self) -> str:
        def tally(problems: list[Problem]) -> str:
            kinds = Counter(p.kind for p in problems)
            return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))

        errors, warnings = self.errors, self.warnings
        if errors:
            text = f"verdict: NOT usable: {len(errors)} problem(s) ({tally(errors)})"
        else:
            text = "verdict: usable"
        if warnings:
            text += (
                f"; {len(warnings)} file(s) that flow_from_directory ignores ({tally(warnings)})"
            )
        return text


def check(root: str | os.PathLike[str], threads: int | None = None) -> CheckReport:
    """Walk ``root/<split>/<class>/`` and decode every image, as training would read it.

    Raises :class:`NotFound` only when ``root`` is not a directory; everything else
    is reported in the returned :class:`CheckReport`.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise NotFound(f"data directory not found: {root}")
    problems: list[Problem] = []

    train_dir = root / "train"
    classes: tuple[str, ...] = ()
    if train_dir.is_dir():
        classes = tuple(sorted(d.name for d in _entries(train_dir, problems) if d.is_dir()))

    # (split, class) -> image files to decode, in the order flow_from_directory lists them
    todo: dict[tuple[str, str], list[Path]] = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            problems.append(Problem(split_dir, "missing-split", f"no {split}/ folder"))
            continue
        present: list[str] = []
        for entry in sorted(_entries(split_dir, problems), key=lambda p: p.name):
            if entry.is_dir():
                present.append(entry.name)
            else:
                problems.append(
                    Problem(entry, "not-an-image", "file outside any class folder (ignored)")
                )
        if split != "train":
            for cls in present:
                if cls not in classes:
                    problems.append(
                        Problem(split_dir / cls, "class-mismatch", "class not in train/")
                    )
            for cls in classes:
                if cls not in present:
                    problems.append(
                        Problem(
                            split_dir / cls, "class-mismatch", f"train class missing from {split}/"
                        )
                    )
        for cls in present:
            todo[(split, cls)] = _class_files(split_dir / cls, problems)

    paths = [p for files in todo.values() for p in files]
    with ThreadPoolExecutor(
        max_workers=threads or default_threads(), thread_name_prefix="clothopt-check"
    ) as pool:
        verdicts = dict(zip(paths, pool.map(_probe, paths), strict=True))

    counts: dict[str, dict[str, int]] = {}
    for (split, cls), files in todo.items():
        readable = 0
        for path in files:
            bad = verdicts[path]
            if bad is None:
                readable += 1
            else:
                problems.append(Problem(path, *bad))
        counts.setdefault(split, {})[cls] = readable
        if readable == 0:
            detail = "no readable images" if files else "no images"
            problems.append(Problem(root / split / cls, "empty-class", detail))
    for split in SPLITS:  # a split with no class folders still gets a column
        if (root / split).is_dir():
            counts.setdefault(split, {})

    problems.sort(key=lambda p: (p.path.as_posix(), PROBLEM_KINDS.index(p.kind)))
    return CheckReport(root=root, classes=classes, counts=counts, problems=problems)


def _entries(folder: Path, problems: list[Problem]) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as exc:
        problems.append(Problem(folder, "unreadable", f"cannot list folder: {exc.strerror}"))
        return []


def _class_files(class_dir: Path, problems: list[Problem]) -> list[Path]:
    """Image files under ``class_dir`` (recursive, sorted like layout); others are reported."""
    images: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=_walk_error(problems)):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath, name)
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                # flow_from_directory lists it by name and training would fail on it: a broken
                # link is probed (and reported) like any image; a FIFO could block the reader
                if path.is_file() or (path.is_symlink() and not path.exists()):
                    images.append(path)
                else:
                    problems.append(Problem(path, "unreadable", "not a regular file"))
            elif not path.is_file():
                continue  # a socket or a dangling link without an image name: never listed
            elif name.startswith("."):
                problems.append(Problem(path, "not-an-image", "hidden file (ignored)"))
            else:
                ext = path.suffix or "no extension"
                problems.append(
                    Problem(path, "not-an-image", f"{ext} is not an image extension (ignored)")
                )
    return sorted(images, key=lambda p: p.relative_to(class_dir).as_posix())


def _walk_error(problems: list[Problem]) -> Callable[[OSError], None]:
    def onerror(exc: OSError) -> None:
        problems.append(
            Problem(Path(exc.filename or "?"), "unreadable", f"cannot list folder: {exc.strerror}")
        )

    return onerror


def _probe(path: Path) -> tuple[str, str] | None:
    """None when ``path`` decodes as training reads it, else (kind, detail)."""
    try:
        load_image(path, None)
    except UnusableImage as exc:
        return exc.kind, exc.detail
    return None
