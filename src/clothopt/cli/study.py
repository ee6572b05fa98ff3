"""Commands for studies: create, optimize, list, show, delete, finalize, report."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from clothopt._quiet import quiet_import_keras
from clothopt.cli._args import _Command, _positive_float, _positive_int, _storage_arg
from clothopt.cli._record import recorded_command, run_it_line
from clothopt.errors import InvalidArgument, Terminated
from clothopt.reports.render import format_table

__all__ = [
    "StudyCreate",
    "StudyDelete",
    "StudyFinalize",
    "StudyList",
    "StudyOptimize",
    "StudyReport",
    "StudyShow",
]


class StudyCreate(_Command):
    """Create a study: a backbone, a search space and a sampler (the grid is enqueued)."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        from clothopt.cli._args import _epochs, _int_range, _seed
        from clothopt.model.backbones import BACKBONES
        from clothopt.samplers import SAMPLERS

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
            "--epochs", type=_epochs, help="epochs per trial, 1 to 1000 (default: space's, 2)"
        )
        p.add_argument("--seed", type=_seed, default=0, help="0 to 2**32 - 1 (default 0)")
        p.add_argument(
            "--resize", default="nearest", help="nearest (the paper's), bilinear, bicubic"
        )
        p.add_argument("--pruner", default="none", help="none or median")
        p.add_argument(
            "--no-cache", action="store_true", help="train end to end (no feature cache)"
        )
        p.add_argument("--cache-dir", help="feature cache folder (default: beside the SQLite file)")
        p.add_argument(
            "--store",
            metavar="URL",
            help="the store every machine shares (file:///shared/folder or s3://bucket/prefix; "
            "S3 credentials from the environment or ~/.aws, never stored)",
        )
        p.add_argument(
            "--max-retries",
            type=_int_range(0, 100),
            default=3,
            help="reruns of a trial whose worker died, 0 to 100 (default 3)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from clothopt.api import create_study
        from clothopt.api._common import config_of
        from clothopt.paths import DEFAULT_STORAGE

        st = create_study(
            args.data,
            backbone=args.backbone,
            storage=args.storage or DEFAULT_STORAGE,
            space=args.space,
            sampler=args.sampler,
            pruner=args.pruner,
            n_trials=args.n_trials,
            study_name=args.name,
            weights=args.weights,
            epochs=args.epochs,
            seed=args.seed,
            resize=args.resize,
            use_cache=not args.no_cache,
            cache_dir=args.cache_dir,
            max_retries=args.max_retries,
            command=recorded_command(args._argv),
            store=args.store,
        )
        config = config_of(st)
        print(
            f"created study {config.name!r}: {config.backbone}, space {config.space.name} "
            f"({config.budget()} trials, sampler {config.sampler}), data {config.data}"
        )
        print(run_it_line(config.name, args.storage))
        return 0


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
        from clothopt.api import load_study, optimize
        from clothopt.api._common import config_of
        from clothopt.paths import DEFAULT_STORAGE

        st = load_study(args.name, args.storage or DEFAULT_STORAGE)
        config = config_of(st)
        summary = optimize(
            st,
            n_trials=args.n_trials,
            timeout=args.timeout,
            data=args.data,
            cache_dir=args.cache_dir,
            show_progress_bar=not args.quiet,
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
        from clothopt.reports.trial_noise import best_versus_next_of, with_spread

        st, config = study.load(args.name, args.storage)
        rows, noise = study.trial_rows(st), best_versus_next_of(st)
        if args.json:
            extra = {"best_versus_next": noise} if noise else {}
            print(json.dumps({"config": config.to_dict(), "trials": rows, **extra}, default=str))
            return 0
        print(
            f"study {config.name}: {config.backbone} (weights {config.weights}), space "
            f"{config.space.name}, sampler {config.sampler}, {config.epochs} epochs, "
            f"seed {config.seed}, {'cached features' if config.use_cache else 'end to end'}"
        )
        print(f"data {config.data} ({config.data_fingerprint[:12]})")
        print(format_table([with_spread(r) for r in rows]) + noise.get("text", ""))
        return 0


class StudyDelete(_Command):
    """Delete a study, its trials, its run folder and its artifacts (not the feature cache,
    which other studies share)."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("name")
        _storage_arg(p)

    def run(self, args: argparse.Namespace) -> int:
        from clothopt.api import delete_study
        from clothopt.paths import DEFAULT_STORAGE

        removed = delete_study(args.name, args.storage or DEFAULT_STORAGE)
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

    from clothopt.reports.paper import paper_dir_if_present

    if value is None:
        return paper_dir_if_present("../shared/paper")
    if value == "none":
        return None
    if not (Path(value) / "final_test.csv").is_file():
        raise InvalidArgument(f"--paper {value}: no final_test.csv there")
    return Path(value)


class StudyFinalize(_Command):
    """Retrain the best trial (or --trial N), score the test split, export a model.

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
        from clothopt.cli._args import (
            MAX_RESAMPLES,
            _epochs,
            _int_range,
            _non_negative_int,
            _seed,
            _unit_interval,
        )
        from clothopt.final.finalize import (
            DEFAULT_RESAMPLES,
            FINE_TUNE_EPOCHS,
            FINE_TUNE_LR,
            MIN_RESAMPLES,
            RACE_REPEATS,
            RACE_TOP,
        )

        p.add_argument("name")
        _storage_arg(p)
        p.add_argument(
            "--epochs",
            type=_epochs,
            help="default: the trial's own when its space searched them, else 5 (the paper's)",
        )
        p.add_argument("--trial", type=_non_negative_int, help="trial number (default: the best)")
        p.add_argument("--data", help="the data set's folder on this machine (same fingerprint)")
        p.add_argument("--cache-dir", help="feature cache folder on this machine")
        p.add_argument(
            "--resamples",
            type=_int_range(MIN_RESAMPLES, MAX_RESAMPLES),
            default=DEFAULT_RESAMPLES,
            help=f"bootstrap resamples (default {DEFAULT_RESAMPLES}, at least {MIN_RESAMPLES})",
        )
        p.add_argument("--bootstrap-seed", type=_seed, default=0)
        p.add_argument(
            "--not-clothing",
            help="folder of non-clothing photos the model's rejection is measured on (default: "
            "../shared/datasets/not-clothing when it exists; 'none' to skip)",
        )
        p.add_argument(
            "--fine-tune",
            type=_non_negative_int,
            default=0,
            metavar="N",
            help="after the head, unfreeze the base's top N layers with weights and train end to "
            "end (one image size; BatchNormalization stays frozen)",
        )
        p.add_argument(
            "--fine-tune-epochs",
            type=_epochs,
            default=FINE_TUNE_EPOCHS,
            help=f"epochs of the fine-tuning (default {FINE_TUNE_EPOCHS})",
        )
        p.add_argument(
            "--fine-tune-lr",
            type=_unit_interval,
            default=FINE_TUNE_LR,
            help=f"its Adam learning rate (default {FINE_TUNE_LR:g})",
        )
        p.add_argument(
            "--race-top",
            type=_int_range(0, 1000),
            default=RACE_TOP,
            help="a study with repeats/folds: re-evaluate its best N trials with fresh seeds "
            f"and finalize the best re-evaluated (default {RACE_TOP}; 0: best search value)",
        )
        p.add_argument(
            "--race-repeats",
            type=_int_range(1, 100),
            default=RACE_REPEATS,
            help=f"fresh seeds per raced trial (default {RACE_REPEATS})",
        )
        p.add_argument(
            "--blend",
            type=_int_range(0, 1000),
            metavar="N",
            help="ship a blend of the race's N best configurations, weighed by ensemble "
            "selection on their out-of-fold probabilities (default: the space's blend, else 0: "
            "the pick alone)",
        )
        _paper_arg(p)
        p.add_argument("--quiet", action="store_true", help="no progress lines")

    def run(self, args: argparse.Namespace) -> int:
        from clothopt.final.store import final_dir
        from clothopt.reports.finalized import format_report
        from clothopt.reports.paper import paper_table

        paper = _paper_dir(args.paper)
        dest = final_dir(args.storage, args.name)
        st = _load_study(args.name, args.storage)
        before = _final_kept(st, dest)  # a previous finalize stopped mid-way is squared first
        _check_final_writable(dest)  # before the training, not after it
        quiet_import_keras()
        try:
            report = self._finalize(args, st)
        except (KeyboardInterrupt, Terminated) as exc:
            _say_what_was_kept(exc, st, dest, before)
            raise
        print(format_report(report, dest))
        print()
        print(paper_table(report, paper))
        return 0

    @staticmethod
    def _finalize(args: argparse.Namespace, st: Any) -> dict[str, Any]:
        from clothopt._io import writing
        from clothopt.api import finalize
        from clothopt.final.store import final_dir

        # a disk that filled, a file-size limit: one line, the previous final/ kept
        with writing(near=final_dir(args.storage, args.name)):
            return finalize(
                st,
                epochs=args.epochs,
                trial=args.trial,
                data=args.data,
                cache_dir=args.cache_dir,
                resamples=args.resamples,
                bootstrap_seed=args.bootstrap_seed,
                not_clothing=_not_clothing_dir(args.not_clothing),
                fine_tune=args.fine_tune,
                fine_tune_epochs=args.fine_tune_epochs,
                fine_tune_lr=args.fine_tune_lr,
                race_top=args.race_top,
                race_repeats=args.race_repeats,
                blend=args.blend,
                show_progress_bar=not args.quiet,
            )


def _load_study(name: str, storage: str | None) -> Any:
    from clothopt import study as study_mod

    return study_mod.load(name, storage)[0]


def _final_kept(st: Any, dest: Any) -> dict[str, Any] | None:
    from clothopt.engine.interrupts import signals_held
    from clothopt.final.store import reconcile

    with signals_held():
        return reconcile(st, dest) if dest.parent.is_dir() else None


def _check_final_writable(dest: Any) -> None:
    from clothopt.final.store import check_replaceable
    from clothopt.outputs import check_writable

    check_replaceable(dest)
    check_writable(dest.parent)


def _say_what_was_kept(
    exc: BaseException, st: Any, dest: Any, before: dict[str, Any] | None
) -> None:
    """Square the study's record with final/ after an interrupt, and say which one is kept
    (on ``exc``, for the CLI's interrupt line)."""
    try:
        kept = _final_kept(st, dest)
    except Exception:  # the storage went away too: say what is on disk
        kept = None
    if kept is None:
        note = "no final model was written"
    elif before is not None and kept.get("created") == before.get("created"):
        note = f"the previous final model (trial {kept.get('trial')}) was kept"
    else:
        note = f"the new final model (trial {kept.get('trial')}) is in place and recorded"
    exc.clothopt_note = note  # type: ignore[attr-defined]


def _not_clothing_dir(value: str | None) -> str | None:
    """--not-clothing: a folder, 'none', or by default ../shared/datasets/not-clothing (beside
    the checkout) when it exists."""
    from pathlib import Path

    if value is None:
        default = Path("../shared/datasets/not-clothing")
        return str(default) if default.is_dir() else None
    return None if value == "none" else value


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
