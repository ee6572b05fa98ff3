"""What the catalogue fingerprint costs: content hashing against the old size+mtime listing.

    python benchmarks/catalogue_fingerprint.py DIR [--repeats 5] [--out FILE.json]

``clothopt similar`` checks the catalogue's fingerprint on every load (:func:`load_index`):
since index format 3 it hashes every image's bytes (SHA-256, streamed), so an edit that keeps
a file's size and modification time is noticed. This measures, over ``--repeats`` runs:
listing the catalogue (:func:`catalogue_files`), the content fingerprint
(:func:`catalogue_fingerprint`), and the previous stat-only fingerprint (re-implemented here
for the comparison), as mean ± sd seconds. The page cache is warm after the first run (the
figures of a repeated ``similar``); the first run is reported on its own as well.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from clothopt.similar import catalogue_files, catalogue_fingerprint


def _stat_only(root: Path, images: Sequence[Path]) -> str:
    """The fingerprint of index format 2: relative path, size and mtime of each image."""
    h = hashlib.sha256()
    for path in sorted(images):
        st = path.stat()
        h.update(f"{path.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _times(call: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def _summary(times: list[float]) -> dict[str, float]:
    return {
        "first_s": round(times[0], 4),
        "mean_s": round(statistics.mean(times[1:] or times), 4),
        "sd_s": round(statistics.stdev(times[1:]) if len(times) > 2 else 0.0, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", help="a catalogue folder (e.g. the data set's train/ split)")
    ap.add_argument("--repeats", type=int, default=5, help="runs of each (first + warm ones)")
    ap.add_argument("--out", help="also write the figures to this JSON file")
    args = ap.parse_args()
    root = Path(args.dir).expanduser().resolve()
    images, _ = catalogue_files(root)
    size = sum(p.stat().st_size for p in images)
    # content first: its first run is the one that may find a cold page cache
    content = _times(lambda: catalogue_fingerprint(root, images), args.repeats)
    listing = _times(lambda: catalogue_files(root), args.repeats)
    stat_only = _times(lambda: _stat_only(root, images), args.repeats)
    figures = {
        "catalogue": str(root),
        "images": len(images),
        "megabytes": round(size / 1e6, 1),
        "repeats": args.repeats,
        "listing": _summary(listing),
        "content_sha256": _summary(content),
        "stat_only": _summary(stat_only),
        "content_mb_per_s_warm": round(size / 1e6 / statistics.mean(content[1:] or content), 1),
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
