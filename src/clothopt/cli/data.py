"""Commands for data sets and backbones: data fetch, data check, backbones."""

from __future__ import annotations

import argparse

from clothopt.cli._args import _Command
from clothopt.reports.render import format_table

__all__ = ["Backbones", "DataCheck", "DataFetch"]


class DataFetch(_Command):
    """Download the 10-class clothing data set (pinned commit) and unpack it atomically."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dest", default="data", help="folder to create (default: data)")
        p.add_argument("--url", help="archive URL (default: the pinned commit on GitHub)")
        p.add_argument("--sha256", help="expected SHA-256 of the archive")

    def run(self, args: argparse.Namespace) -> int:
        from clothopt.data import fetch

        kwargs = {"url": args.url} if args.url else {}
        dest = fetch(args.dest, sha256=args.sha256, **kwargs)
        print(f"data set ready in {dest}")
        return 0


class DataCheck(_Command):
    """Count images per class and split; list unreadable, truncated and stray files."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("dir", help="data set folder (DIR/train|validation|test/<class>/)")

    def run(self, args: argparse.Namespace) -> int:
        from clothopt.data import check

        report = check(args.dir)
        print(report.format())
        return 0 if report.usable else 1


# --------------------------------------------------------------------------- backbones


class Backbones(_Command):
    """List the backbones clothopt knows, with their input sizes."""

    def run(self, args: argparse.Namespace) -> int:
        from clothopt.model.backbones import BACKBONES

        rows = [
            {
                "name": s.name,
                "keras": f"{s.module}.{s.constructor}",
                "default_size": s.default_size,
                "min_size": s.min_size,
                "features": s.feature_dim,
                "paper": "yes" if s.paper else "",
            }
            for s in BACKBONES.values()
        ]
        print(format_table(rows))
        return 0
