"""Command line: a table of small commands; each one's docstring is its help.

``main(argv) -> int`` never shows a traceback for a mistake a user can make: it prints one
line and returns non-zero. TensorFlow is imported only by commands that train or predict.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from clothopt import __version__
from clothopt._quiet import VERBOSE_ENV, native_stderr_captured, quiet_import_keras, verbose
from clothopt.engine.runner import sigterm_raises
from clothopt.engine.storage import storage_errors
from clothopt.errors import Terminated, UserError
from clothopt.reports.render import format_table

__all__ = ["main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        default=os.environ.get("CLOTHOPT_STORAGE"),
        help="SQLAlchemy URL (default sqlite:///studies/clothopt.db, or $CLOTHOPT_STORAGE)",
    )


class _Command:
    """Base: subclasses set ``add_arguments`` and ``run``; the docstring is the help text."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


# --------------------------------------------------------------------------- data


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


# --------------------------------------------------------------------------- study


class StudyCreate(_Command):
    """Create a study: a backbone, a search space and a sampler (the grid is enqueued)."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        from clothopt.model.backbones import BACKBONES
        from clothopt.spaces import SAMPLERS

        p.add_argument(
            "--backbone",
            required=True,
            help=f"one of: {', '.join(BACKBONES)}; or several, comma-separated, for the trials "
            "to choose from (a space with a backbone parameter decides itself)",
        )
        p.add_argument("--space", default="paper", help="paper, tpe, quick, wide or a TOML file")
        p.add_argument("--sampler", choices=SAMPLERS, help="default: the space's own")
        p.add_argument("--n-trials", type=_positive_int, help="budget for non-grid samplers")
        p.add_argument("--name", help="study name (default: BACKBONE-SPACE-SAMPLER)")
        _storage_arg(p)
        p.add_argument("--data", default="data", help="data set folder (default: data)")
        p.add_argument("--weights", default="imagenet", help="imagenet, none or a weights file")
        p.add_argument(
            "--epochs", type=_positive_int, help="epochs per trial (default: space's, 2)"
        )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--resize", default="nearest", help="nearest (the paper's), bilinear, bicubic"
        )
        p.add_argument("--pruner", default="none", help="none or median")
        p.add_argument(
            "--no-cache", action="store_true", help="train end to end (no feature cache)"
        )
        p.add_argument("--cache-dir", help="feature cache folder (default: beside the SQLite file)")
        p.add_argument(
            "--max-retries", type=int, default=3, help="reruns of a trial whose worker died"
        )

    def run(self, args: argparse.Namespace) -> int:
        from clothopt import study
        from clothopt.dashboard import describe_study

        _, config = study.create(
            backbone=args.backbone,
            space=args.space,
            sampler=args.sampler,
            n_trials=args.n_trials,
            name=args.name,
            storage=args.storage,
            data=args.data,
            weights=args.weights,
            epochs=args.epochs,
            seed=args.seed,
            resize=args.resize,
            pruner=args.pruner,
            use_cache=not args.no_cache,
            cache_dir=args.cache_dir,
            max_retries=args.max_retries,
            command=recorded_command(args._argv),
            on_create=describe_study,  # its note and metric name in optuna-dashboard
        )
        print(
            f"created study {config.name!r}: {config.backbone}, space {config.space.name} "
            f"({config.budget()} trials, sampler {config.sampler}), data {config.data}"
        )
        print(run_it_line(config.name, args.storage))
        return 0


def _has_password(text: str) -> bool:
    from sqlalchemy.engine import make_url

    try:
        return bool(make_url(text).password)
    except Exception:
        return "@" in text and "://" in text  # not a URL SQLAlchemy reads: assume the worst


def recorded_command(argv: Sequence[str]) -> str:
    """The command line as stored with a study: shell-quoted, every URL's password masked."""
    from clothopt.paths import masked_url

    words = ["clothopt"]
    for word in argv:
        flag, eq, value = word.partition("=")
        if eq and flag.startswith("--") and _has_password(value):
            word = f"{flag}={masked_url(value)}"
        elif _has_password(word):
            word = masked_url(word)
        words.append(word)
    return shlex.join(words)


def run_it_line(name: str, storage: str | None) -> str:
    """``run it: clothopt study optimize NAME ...``, shell-quoted, never with a password.

    A storage URL with a password is left to ``$CLOTHOPT_STORAGE`` (or ~/.pgpass/PGPASSWORD).
    """
    from clothopt.paths import masked_url

    line = f"run it: {shlex.join(['clothopt', 'study', 'optimize', name])}"
    if not storage or storage == os.environ.get("CLOTHOPT_STORAGE"):
        return line  # the storage comes from $CLOTHOPT_STORAGE (or the default) again
    if not _has_password(storage):
        return f"{line} --storage {shlex.quote(storage)}"
    without = masked_url(storage).replace(":***@", "@")
    return (
        f'{line} --storage "$CLOTHOPT_STORAGE"  (export CLOTHOPT_STORAGE=<the URL with its '
        f"password>, or keep the password in ~/.pgpass or $PGPASSWORD and pass --storage "
        f"{shlex.quote(without)})"
    )


class StudyOptimize(_Command):
    """Run a study's trials; run it again to continue where it stopped."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("name")
        _storage_arg(p)
        p.add_argument("--n-trials", type=_positive_int, help="stop after this many trials here")
        p.add_argument("--timeout", type=_positive_float, help="start no trial after S seconds")
        p.add_argument("--data", help="the data set's folder on this machine (same fingerprint)")
        p.add_argument("--cache-dir", help="feature cache folder on this machine")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(self, args: argparse.Namespace) -> int:
        from clothopt import study
        from clothopt.dashboard import upload_validation_report
        from clothopt.objective import Objective
        from clothopt.runs import open_run

        st, config = study.load(args.name, args.storage)
        dataset, cache = open_run(config, args.data, args.cache_dir, progress=not args.quiet)
        quiet_import_keras()  # TensorFlow's start-up lines only with --verbose
        summary = study.optimize(
            st,
            config,
            Objective(config, dataset, cache),
            n_trials=args.n_trials,
            timeout=args.timeout,
            progress=not args.quiet,
            callbacks=[upload_validation_report],  # per-class report, shown by the dashboard
        )
        print(
            f"ran {summary.ran} trial(s) in {summary.seconds:.1f} s: {summary.complete} complete, "
            f"{summary.failed} failed, {summary.pruned} pruned, "
            f"{summary.recovered} recovered from dead workers"
        )
        if summary.best_value is not None:
            print(f"best validation macro-F1 {summary.best_value:.4f} with {summary.best_params}")
        if config.sampler == "grid":
            g = study.grid_status(st, config)
            print(
                f"grid: {g['complete_once']}/{g['points']} points complete exactly once"
                + (f"; duplicates {g['duplicates']}" if g["duplicates"] else "")
            )
        if summary.failed and not summary.complete:
            print(
                f"clothopt: error: no trial completed and {summary.failed} failed "
                f"(reasons: clothopt study show {shlex.quote(args.name)})",
                file=sys.stderr,
            )
            return 1
        return 0


class StudyList(_Command):
    """List the studies in a storage."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        _storage_arg(p)

    def run(self, args: argparse.Namespace) -> int:
        from clothopt import study

        print(format_table(study.list_studies(args.storage)))
        return 0


class StudyShow(_Command):
    """Show a study's configuration and its trials, the best first."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("name")
        _storage_arg(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")

    def run(self, args: argparse.Namespace) -> int:
        from clothopt import study

        st, config = study.load(args.name, args.storage)
        rows = study.trial_rows(st)
        if args.json:
            print(json.dumps({"config": config.to_dict(), "trials": rows}, default=str))
            return 0
        print(
            f"study {config.name}: {config.backbone} (weights {config.weights}), space "
            f"{config.space.name}, sampler {config.sampler}, {config.epochs} epochs, "
            f"seed {config.seed}, {'cached features' if config.use_cache else 'end to end'}"
        )
        print(f"data {config.data} ({config.data_fingerprint[:12]})")
        print(format_table(rows))
        return 0


class StudyDelete(_Command):
    """Delete a study, its trials, its run folder and its artifacts (not the feature cache,
    which other studies share)."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("name")
        _storage_arg(p)

    def run(self, args: argparse.Namespace) -> int:
        from clothopt import study
        from clothopt.dashboard import remove_artifacts

        removed = study.delete(args.name, args.storage, on_delete=remove_artifacts)
        print(f"deleted study {args.name!r}")
        for what in removed[1:]:
            print(f"removed {what}")
        return 0


def _paper_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--paper",
        help="folder with the paper's final_test.csv, shown beside ours "
        "(default: ../shared/paper when it exists; 'none' to leave it out)",
    )


def _paper_dir(value: str | None) -> Any:
    from pathlib import Path

    from clothopt.reports.paper import default_paper_dir

    if value is None:
        return default_paper_dir()
    if value == "none":
        return None
    if not (Path(value) / "final_test.csv").is_file():
        raise UserError(f"--paper {value}: no final_test.csv there")
    return Path(value)


class StudyFinalize(_Command):
    """Retrain the best trial (or --trial N) for 5 epochs, score the test split, export a model.

    Writes into the study's folder (final/, replaced whole): model.keras (raw RGB images of any
    size in, class probabilities out; loads with plain Keras, safe mode), classes.json,
    report.json (per-class and macro precision, recall and F1, accuracy, confusion matrix, a
    95% bootstrap interval of the test macro-F1, parameters, seconds) and
    confusion_matrix.html. The test figures are those of the saved model itself. The model
    also says "not clothing": a kNN detector fitted on the train features, its threshold set to
    accept 95% of validation; report.json's "ood" gives what it accepts.
    """

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        from clothopt.final.finalize import DEFAULT_EPOCHS, DEFAULT_RESAMPLES

        p.add_argument("name")
        _storage_arg(p)
        p.add_argument(
            "--epochs", type=_positive_int, default=DEFAULT_EPOCHS, help="default 5 (the paper's)"
        )
        p.add_argument("--trial", type=int, help="trial number (default: the best)")
        p.add_argument("--data", help="the data set's folder on this machine (same fingerprint)")
        p.add_argument("--cache-dir", help="feature cache folder on this machine")
        p.add_argument(
            "--resamples",
            type=_positive_int,
            default=DEFAULT_RESAMPLES,
            help=f"bootstrap resamples (default {DEFAULT_RESAMPLES}, at least 1000)",
        )
        p.add_argument("--bootstrap-seed", type=int, default=0)
        p.add_argument(
            "--not-clothing",
            help="folder of non-clothing photos the model's rejection is measured on (default: "
            "../shared/datasets/not-clothing when it exists; 'none' to skip)",
        )
        _paper_arg(p)
        p.add_argument("--quiet", action="store_true", help="no progress lines")

    def run(self, args: argparse.Namespace) -> int:
        from clothopt.final.finalize import finalize
        from clothopt.final.store import final_dir
        from clothopt.reports.finalized import format_report
        from clothopt.reports.paper import paper_table

        paper = _paper_dir(args.paper)
        quiet_import_keras()
        report = finalize(
            args.name,
            args.storage,
            epochs=args.epochs,
            trial=args.trial,
            data=args.data,
            cache_dir=args.cache_dir,
            resamples=args.resamples,
            bootstrap_seed=args.bootstrap_seed,
            not_clothing=(
                True
                if args.not_clothing is None
                else None
                if args.not_clothing == "none"
                else args.not_clothing
            ),
            progress=not args.quiet,
            on_finalized=_attach_to_dashboard(args.storage),
        )
        print(format_report(report, final_dir(args.storage, args.name)))
        print()
        print(paper_table(report, paper))
        return 0


def _attach_to_dashboard(storage: str | None) -> Any:
    """A finalize callback: show the final files under the trial in optuna-dashboard."""

    def attach(st: Any, number: int, files: list[Any]) -> None:
        from clothopt.dashboard import attach_files

        try:
            attach_files(st, number, storage, files)
        except (UserError, OSError) as exc:  # best effort: the files are on disk either way
            print(f"finalize: not attached to the dashboard: {exc}", file=sys.stderr)

    return attach


class StudyReport(_Command):
    """Print a finalized study's test report (its report.json) beside the paper's figures."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("name")
        _storage_arg(p)
        _paper_arg(p)
        p.add_argument("--json", action="store_true", help="print report.json itself")

    def run(self, args: argparse.Namespace) -> int:
        from clothopt.final.store import load_final
        from clothopt.reports.finalized import format_report
        from clothopt.reports.paper import paper_table

        paper = _paper_dir(args.paper)
        report, folder = load_final(args.name, args.storage)
        if args.json:
            print(json.dumps(report, indent=2, sort_keys=True))
            return 0
        print(format_report(report, folder))
        print()
        print(paper_table(report, paper))
        return 0


# --------------------------------------------------------------------------- predict


class Predict(_Command):
    """Top-k classes of images with a model from `clothopt study finalize`.

    A folder stands for the images in it. An unreadable file gets its own error line and the
    rest are still predicted; the exit status is 1 when any file failed. The model loads with
    Keras safe mode on; class names come from classes.json beside it. A picture the model's
    detector rejects reads "not clothing (score s < threshold t)".
    """

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help="a .keras file written by clothopt study finalize")
        p.add_argument("images", nargs="+", metavar="IMAGE")
        p.add_argument("--top-k", type=_positive_int, default=3, help="classes per image (3)")
        p.add_argument("--json", action="store_true", help="one JSON object per image and line")

    def run(self, args: argparse.Namespace) -> int:
        from clothopt.predict import expand_paths, load_classifier, predict_files

        paths = expand_paths(args.images)
        if not paths:
            raise UserError("no images in the folders given")
        from clothopt.predict import NO_DETECTOR_NOTE, shipped_threshold

        with native_stderr_captured():  # TensorFlow start-up, "Not handling type DT_DOUBLE"
            model, classes = load_classifier(args.model)
        if shipped_threshold(model) is None:
            print(f"clothopt: note: {NO_DETECTOR_NOTE}", file=sys.stderr, flush=True)
        failed = 0
        rows = []
        for pred in predict_files(model, classes, paths, args.top_k):
            failed += pred.error is not None
            if args.json:
                print(json.dumps(pred.to_dict()), flush=True)
            elif pred.error is not None:
                print(f"clothopt: error: {pred.error}", file=sys.stderr, flush=True)
            else:
                row: dict[str, Any] = {"image": pred.image}
                if pred.verdict:
                    row["top 1"] = pred.verdict
                else:
                    for rank, (cls, prob) in enumerate(pred.top, 1):
                        row[f"top {rank}"] = f"{cls} {prob:.3f}"
                rows.append(row)
        if not args.json and rows:
            print(format_table(rows))
        if failed:
            print(f"clothopt: {failed} of {len(paths)} images failed", file=sys.stderr)
        return 1 if failed else 0


class Evaluate(_Command):
    """Finalize's test report for a labelled folder DIR/<class>/... with a finalized model.

    Per-class and macro precision/recall/F1, accuracy, confusion matrix, 95% bootstrap interval
    of the macro-F1 and the share the "not clothing" detector rejected. A folder that is no
    class of the model (classes.json) is an error, unless --unknown-as-reject: its images
    should then be rejected, and the AUROC of the detector is reported for them.
    """

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        from clothopt.final.finalize import DEFAULT_RESAMPLES

        p.add_argument("model", help="a .keras file written by clothopt study finalize")
        p.add_argument("dir", help="labelled images: DIR/<class>/<images>")
        p.add_argument("--json", action="store_true", help="print the report as JSON")
        p.add_argument("--out", help="also write report.json and the confusion matrix here")
        p.add_argument(
            "--unknown-as-reject",
            action="store_true",
            help="folders that are no class of the model hold pictures to reject",
        )
        p.add_argument("--resamples", type=_positive_int, default=DEFAULT_RESAMPLES)
        p.add_argument("--bootstrap-seed", type=int, default=0)

    def run(self, args: argparse.Namespace) -> int:
        from clothopt.final.evaluate import evaluate, format_evaluation, write_evaluation
        from clothopt.final.finalize import MIN_RESAMPLES

        if args.resamples < MIN_RESAMPLES:
            raise UserError(f"--resamples must be at least {MIN_RESAMPLES}, not {args.resamples}")
        report = evaluate(
            args.model,
            args.dir,
            unknown_as_reject=args.unknown_as_reject,
            resamples=args.resamples,
            seed=args.bootstrap_seed,
        )
        print(
            json.dumps(report, indent=2, sort_keys=True) if args.json else format_evaluation(report)
        )
        if args.out:
            written = write_evaluation(report, args.out)
            print(f"wrote {', '.join(p.name for p in written)} to {args.out}", file=sys.stderr)
        return 0


# --------------------------------------------------------------------------- similar items


class IndexBuild(_Command):
    """Embed every image under a folder with a finalized model; write a similar-item index.

    The folder is read recursively in any layout; files that are not images are skipped and
    counted, an unreadable image is reported and left out. The index (one .npz file, written
    atomically) records the model's SHA-256 and the folder's fingerprint: `clothopt similar`
    refuses it once either changed.
    """

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help="a .keras file written by clothopt study finalize")
        p.add_argument("dir", help="the catalogue: a folder of images (any layout)")
        p.add_argument("--out", help="index file (default: similar.npz beside the model)")

    def run(self, args: argparse.Namespace) -> int:
        from pathlib import Path

        from clothopt.similar import build_index

        out = Path(args.out) if args.out else Path(args.model).with_name("similar.npz")
        result = build_index(
            args.model, args.dir, out, log=lambda line: print(f"clothopt: {line}", file=sys.stderr)
        )
        print(
            f"indexed {result.images} images ({result.dims} dims) in {result.seconds:.1f} s: "
            f"{result.skipped} non-image files skipped, {len(result.failed)} unreadable; "
            f"wrote {result.out}"
        )
        return 0


class Similar(_Command):
    """The catalogue items most similar to each image, from an index (clothopt index build)."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("index", help="an index file written by clothopt index build")
        p.add_argument("images", nargs="+", metavar="IMAGE")
        p.add_argument("-k", type=_positive_int, default=5, help="items per image (5)")
        p.add_argument("--json", action="store_true", help="one JSON object per image and line")
        p.add_argument("--html", metavar="OUT", help="also write a self-contained HTML page")
        p.add_argument("--model", help="the model (default: the one the index was built with)")

    def run(self, args: argparse.Namespace) -> int:
        from pathlib import Path

        from clothopt.predict import expand_paths, load_classifier
        from clothopt.similar import load_index, query, rejections, write_html

        paths = expand_paths(args.images)
        if not paths:
            raise UserError("no images in the folders given")
        for path in paths:
            if not path.is_file():
                raise UserError(f"image not found: {path}")
        index = load_index(args.index, args.model)
        model, _ = load_classifier(args.model or index.meta["model"])
        rejected = rejections(model, paths)
        kept = [p for p, r in zip(paths, rejected, strict=True) if r is None]
        found = iter(query(index, model, kept, args.k))
        # a rejected query ("not clothing") gets its verdict instead of neighbours
        results = [next(found) if r is None else [] for r in rejected]
        if args.json:
            for path, hits, r in zip(paths, results, rejected, strict=True):
                line: dict[str, Any] = {"image": str(path), "similar": [h.to_dict() for h in hits]}
                if r is not None:
                    line |= {"rejected": True, **r}
                print(json.dumps(line))
        else:
            rows = []
            for path, hits, r in zip(paths, results, rejected, strict=True):
                row: dict[str, Any] = {"image": str(path)}
                if r is not None:
                    row["1"] = r["verdict"]
                for rank, hit in enumerate(hits, 1):
                    row[str(rank)] = f"{hit.relpath} {hit.score:.3f}"
                rows.append(row)
            print(format_table(rows))
        if args.html:
            out = write_html(Path(args.html), [str(p) for p in paths], results)
            print(f"wrote {out}", file=sys.stderr)
        return 0


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

        from clothopt.reports.backbones import backbone_report
        from clothopt.reports.paper import GRID_FILE, default_paper_dir

        if args.paper is None:
            paper = default_paper_dir(GRID_FILE)
        elif args.paper == "none":
            paper = None
        else:
            paper = Path(args.paper)
            if not paper.is_dir():
                raise UserError(f"--paper {args.paper}: no such folder")
        out = _report_dir(args.out, args.storage, "backbones")
        _print_report(backbone_report(args.studies, args.storage, out, paper))
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
        from clothopt.model.backbones import BACKBONES

        p.add_argument("--backbone", required=True, help=f"one of: {', '.join(BACKBONES)}")
        p.add_argument(
            "--samplers", default="grid,tpe,random,qmc,gp", help="comma-separated (default: all)"
        )
        p.add_argument("--seeds", type=_positive_int, default=5, help="seeds 0..N-1 (default 5)")
        p.add_argument("--budget", type=_positive_int, default=27, help="trials per study")
        p.add_argument("--space", default="paper", help="paper, tpe, quick or a TOML file")
        _storage_arg(p)
        p.add_argument("--data", default="data", help="data set folder (default: data)")
        p.add_argument("--weights", default="imagenet", help="imagenet, none or a weights file")
        p.add_argument("--epochs", type=_positive_int, help="epochs per trial (default: space's)")
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
        from clothopt.reports.samplers import load_sampler_runs, sampler_report

        samplers = parse_samplers(args.samplers)
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
        _print_report(sampler_report(runs, args.budget, out, comparison.samplers, meta))
        return 0


# --------------------------------------------------------------------------- the table

COMMANDS: dict[str, type[_Command]] = {
    "data fetch": DataFetch,
    "data check": DataCheck,
    "backbones": Backbones,
    "study create": StudyCreate,
    "study optimize": StudyOptimize,
    "study list": StudyList,
    "study show": StudyShow,
    "study delete": StudyDelete,
    "study finalize": StudyFinalize,
    "study report": StudyReport,
    "predict": Predict,
    "evaluate": Evaluate,
    "index build": IndexBuild,
    "similar": Similar,
    "compare backbones": CompareBackbones,
    "compare samplers": CompareSamplers,
    "dashboard": Dashboard,
}

_GROUPS = {"data": "data sets", "study": "studies", "compare": "compare studies"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, like every other user error
        self.exit(2, f"{self.prog}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clothopt",
        description="Backbone and hyperparameter search for clothing classifiers, on Optuna.",
    )
    parser.add_argument("--version", action="version", version=f"clothopt {__version__}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show the native libraries' start-up lines (TensorFlow's), hidden by default",
    )
    top = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    groups: dict[str, argparse._SubParsersAction[Any]] = {}
    for name, cls in COMMANDS.items():
        words = name.split()
        help_text = (cls.__doc__ or "").strip().splitlines()[0]
        if len(words) == 1:
            sub = top.add_parser(words[0], help=help_text, description=help_text)
        else:
            if words[0] not in groups:
                g = top.add_parser(words[0], help=_GROUPS.get(words[0], words[0]))
                groups[words[0]] = g.add_subparsers(
                    dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser, required=True
                )
            sub = groups[words[0]].add_parser(words[1], help=help_text, description=help_text)
        cls.add_arguments(sub)
        sub.set_defaults(_command=cls)
    return parser


def _quiet_libraries() -> None:
    # TensorFlow's C++ start-up chatter (no CUDA here, oneDNN notes) is not the user's business
    if not verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (2: a user error, 130/143: interrupted)."""
    try:
        # SIGTERM at any moment (imports included) ends the command as cleanly as Ctrl-C
        with sigterm_raises():
            return _main(list(sys.argv[1:] if argv is None else argv))
    except UserError as exc:
        print(f"clothopt: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("clothopt: interrupted; the running trial was put back in the queue", file=sys.stderr)
        return 130
    except Terminated:
        print("clothopt: terminated; the running trial was put back in the queue", file=sys.stderr)
        return 143


def _main(argv: list[str]) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_command", None) is None:
        parser.print_help()
        return 2
    args._argv = argv  # the command line as given, for the study's record
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    _quiet_libraries()
    with storage_errors(getattr(args, "name", None)):
        return args._command().run(args)
