"""Commands that look across studies: compare backbones, compare samplers, dashboard."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

from clothopt._quiet import quiet_import_keras
from clothopt.cli._args import _Command, _positive_int, _storage_arg
from clothopt.errors import NotFound

__all__ = ["CompareBackbones", "CompareSamplers", "Dashboard"]


# --------------------------------------------------------------------------- dashboard


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, not {value}")
    return value


class Dashboard(_Command):
    """Open optuna-dashboard on the studies: notes, live trials, figures and artifacts.

    Binds to 127.0.0.1 unless --host says otherwise (the dashboard has no authentication).
    Ctrl-C stops it.
    """

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        _storage_arg(p)
        p.add_argument(
            "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; no login)"
        )
        p.add_argument("--port", type=_port, default=8080, help="default 8080; 0: any free port")
        p.add_argument(
            "--artifacts",
            default=os.environ.get("CLOTHOPT_ARTIFACTS"),
            help="artifact folder (default: beside the SQLite file, or $CLOTHOPT_ARTIFACTS)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from clothopt.dashboard import serve

        return serve(args.storage, args.host, args.port, args.artifacts)


# --------------------------------------------------------------------------- compare


def _report_dir(out: str | None, storage: str | None, name: str) -> Any:
    from pathlib import Path

    from clothopt.paths import report_dir

    # default: <folder of the SQLite file>/reports/<name>, beside runs/ and features/
    return Path(out) if out else report_dir(storage, name)


def _storage_inputs(storage: str | None) -> list[Any]:
    """What a comparison reads or another command owns in the storage's folder: the SQLite
    file, the studies' folders (their final/ models) and the feature cache."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from clothopt.paths import DEFAULT_STORAGE, default_cache_dir, studies_root

    root = studies_root(storage)
    found: list[Any] = [root / "runs", default_cache_dir(storage)]
    url = make_url(storage or DEFAULT_STORAGE)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        found.append(Path(url.database).expanduser())
    return found


def _write_report(out: Any, kind: Any, inputs: list[Any], build: Any) -> Any:
    """``build(folder)`` writes the report into a staging folder, swapped in as ``out`` whole
    (:func:`clothopt.outputs.staged_dir`); its files are then named as in ``out``."""
    from clothopt.outputs import check_output_dir, staged_dir

    folder = check_output_dir(out, kind, inputs)
    with staged_dir(folder, lambda dest: check_output_dir(dest, kind, inputs)) as tmp:
        report = build(tmp)
    report.files = [folder / p.relative_to(tmp) for p in report.files]
    return report


def _print_report(report: Any) -> None:
    print(report.markdown)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {len(report.files)} files to {report.files[0].parent}", file=sys.stderr)


class CompareBackbones(_Command):
    """Compare studies: the paper's Tables I and III, test intervals and McNemar tests, HTML.

    Table I needs only the studies' trials; Table III, the bootstrap intervals, the McNemar
    tests, per-class F1 and confusion matrices need finalized studies (clothopt study
    finalize); a study that is not finalized shows "not finalized" there. Prints Markdown and
    writes CSV files, report.md and a self-contained report.html to --out.
    """

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("studies", nargs="+", metavar="STUDY")
        _storage_arg(p)
        p.add_argument("--out", help="report folder (default: reports/backbones beside the DB)")
        p.add_argument(
            "--paper",
            help="folder with the paper's CSV tables, shown beside ours "
            "(default: ../shared/paper when it exists; 'none' to leave them out)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from pathlib import Path

        from clothopt.outputs import COMPARE_BACKBONES
        from clothopt.reports.backbones import backbone_report
        from clothopt.reports.paper import GRID_FILE, paper_dir_if_present

        if args.paper is None:
            paper = paper_dir_if_present("../shared/paper", GRID_FILE)
        elif args.paper == "none":
            paper = None
        else:
            paper = Path(args.paper)
            if not paper.is_dir():
                raise NotFound(f"--paper {args.paper}: no such folder")
        out = _report_dir(args.out, args.storage, "backbones")
        inputs = [*_storage_inputs(args.storage), *([paper] if paper else [])]
        report = _write_report(
            out,
            COMPARE_BACKBONES,
            inputs,
            lambda folder: backbone_report(args.studies, args.storage, folder, paper),
        )
        _print_report(report)
        return 0


class CompareSamplers(_Command):
    """Run one study per sampler and seed on one space; report which finds a good point first.

    Studies are named cmp-BACKBONE-SAMPLER-sSEED and stored like any other, so running the
    command again resumes an interrupted comparison. Every seed's full grid also runs (in a
    seeded random order): its best is the target. Prints Markdown and writes CSV files,
    report.md, report.html and comparison.json (settings, sampler arguments, versions) to --out.
    """

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        from clothopt.cli._args import _epochs, _int_range
        from clothopt.model.backbones import BACKBONES

        p.add_argument("--backbone", required=True, help=f"one of: {', '.join(BACKBONES)}")
        p.add_argument(
            "--samplers", default="grid,tpe,random,qmc,gp", help="comma-separated (default: all)"
        )
        p.add_argument(
            "--seeds", type=_int_range(1, 1000), default=5, help="seeds 0..N-1 (default 5)"
        )
        p.add_argument("--budget", type=_positive_int, default=27, help="trials per study")
        p.add_argument("--space", default="paper", help="paper, tpe, quick, wide or a TOML file")
        _storage_arg(p)
        p.add_argument("--data", default="data", help="data set folder (default: data)")
        p.add_argument("--weights", default="imagenet", help="imagenet, none or a weights file")
        p.add_argument("--epochs", type=_epochs, help="epochs per trial (default: space's)")
        p.add_argument("--resize", default="nearest", help="nearest (the paper's), bilinear, ...")
        p.add_argument("--cache-dir", help="feature cache folder (default: beside the SQLite file)")
        p.add_argument("--out", help="report folder (default: reports/samplers-BACKBONE)")
        p.add_argument(
            "--report-only", action="store_true", help="run nothing: report the studies as they are"
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    def run(self, args: argparse.Namespace) -> int:
        from clothopt.compare import parse_samplers, run_comparison
        from clothopt.dashboard import describe_study, upload_validation_report
        from clothopt.model.backbones import BACKBONES
        from clothopt.outputs import COMPARE_SAMPLERS, check_output_dir
        from clothopt.reports.samplers import load_sampler_runs, sampler_report

        samplers = parse_samplers(args.samplers)
        inputs = [*_storage_inputs(args.storage), args.data]
        inputs += [args.weights] if args.weights not in ("imagenet", "none") else []
        if args.backbone in BACKBONES:  # else run_comparison says what is wrong with it
            # before the trials: a wrong --out must not cost the whole comparison
            out = _report_dir(args.out, args.storage, f"samplers-{args.backbone}")
            check_output_dir(out, COMPARE_SAMPLERS, inputs)
        quiet_import_keras()
        # the settings that define the comparison (not where it is stored), to rerun it
        command = ["clothopt", "compare", "samplers", "--backbone", args.backbone]
        command += ["--samplers", ",".join(samplers), "--seeds", str(args.seeds)]
        command += ["--budget", str(args.budget), "--space", args.space, "--data", args.data]
        command += ["--weights", args.weights, "--resize", args.resize]
        command += ["--epochs", str(args.epochs)] if args.epochs else []
        comparison = run_comparison(
            backbone=args.backbone,
            samplers=samplers,
            seeds=args.seeds,
            budget=args.budget,
            space=args.space,
            storage=args.storage,
            data=args.data,
            weights=args.weights,
            epochs=args.epochs,
            resize=args.resize,
            cache_dir=args.cache_dir,
            run=not args.report_only,
            progress=not args.quiet,
            command=shlex.join(command),
            log=lambda line: print(line, file=sys.stderr),
            on_create=describe_study,
            callbacks=[upload_validation_report],
        )
        runs = load_sampler_runs(list(comparison.names.values()), args.storage)
        out = _report_dir(args.out, args.storage, f"samplers-{comparison.backbone}")
        meta = {"command": shlex.join(command), "skipped": comparison.skipped}
        report = _write_report(
            out,
            COMPARE_SAMPLERS,
            inputs,
            lambda folder: sampler_report(runs, args.budget, folder, comparison.samplers, meta),
        )
        _print_report(report)
        return 0
