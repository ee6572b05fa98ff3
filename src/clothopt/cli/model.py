"""Commands that use a finalized model: predict, evaluate, index build, similar."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from clothopt._quiet import native_stderr_captured, quiet_import_keras
from clothopt.cli._args import _Command, _positive_int, _storage_arg
from clothopt.errors import InvalidArgument, NotFound
from clothopt.reports.render import format_table

__all__ = ["Evaluate", "IndexBuild", "Predict", "Similar"]


class Predict(_Command):
    """Top-k classes of images with a model from `clothopt study finalize`.

    A folder stands for the images in it. An unreadable file gets its own error line and the
    rest are still predicted; the exit status is 1 when any file failed. The model loads with
    Keras safe mode on; class names come from classes.json beside it. A picture the model's
    detector rejects reads "not clothing (score s < threshold t)".
    """

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        _model_arg(p)
        p.add_argument("images", nargs="+", metavar="IMAGE")
        p.add_argument("--top-k", type=_positive_int, default=3, help="classes per image (3)")
        p.add_argument("--json", action="store_true", help="one JSON object per image and line")

    def run(self, args: argparse.Namespace) -> int:
        from clothopt.predict import expand_paths, load_classifier, predict_files

        paths = expand_paths(args.images)
        if not paths:
            raise NotFound("no images in the folders given")
        from clothopt.predict import NO_DETECTOR_NOTE, shipped_threshold

        args.model = _resolved(args)

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
    of the macro-F1 and the share the "not clothing" detector rejected. Every class of the
    model (classes.json) needs a folder with images (a missing class would count as F1 0). A
    folder that is no class of the model is an error, unless --unknown-as-reject: its images
    should then be rejected, and the AUROC of the detector is reported for them.
    """

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        from clothopt.cli._args import MAX_RESAMPLES, _int_range, _seed
        from clothopt.final.finalize import DEFAULT_RESAMPLES, MIN_RESAMPLES

        _model_arg(p)
        p.add_argument("dir", help="labelled images: DIR/<class>/<images>")
        p.add_argument("--json", action="store_true", help="print the report as JSON")
        p.add_argument("--out", help="also write report.json and the confusion matrix here")
        p.add_argument(
            "--unknown-as-reject",
            action="store_true",
            help="folders that are no class of the model hold pictures to reject",
        )
        p.add_argument(
            "--resamples",
            type=_int_range(MIN_RESAMPLES, MAX_RESAMPLES),
            default=DEFAULT_RESAMPLES,
            help=f"bootstrap resamples ({DEFAULT_RESAMPLES}, at least {MIN_RESAMPLES})",
        )
        p.add_argument("--bootstrap-seed", type=_seed, default=0)

    def run(self, args: argparse.Namespace) -> int:
        from clothopt.final.evaluate import evaluate, format_evaluation, write_evaluation
        from clothopt.final.finalize import MIN_RESAMPLES

        if args.resamples < MIN_RESAMPLES:
            raise InvalidArgument(
                f"--resamples must be at least {MIN_RESAMPLES}, not {args.resamples}"
            )
        args.model = _resolved(args)
        inputs = [*_model_files(args.model), args.dir]
        if args.out:  # before the scoring: a wrong --out costs nothing
            from clothopt.outputs import EVALUATION, check_output_dir

            check_output_dir(args.out, EVALUATION, inputs)
        quiet_import_keras()  # TensorFlow's start-up lines only with --verbose
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
            written = write_evaluation(report, args.out, inputs)
            print(f"wrote {', '.join(p.name for p in written)} to {args.out}", file=sys.stderr)
        return 0


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        help="a .keras file written by clothopt study finalize, or study:NAME for that study's "
        "final model (fetched from its store on a machine that did not finalize it)",
    )
    _storage_arg(p)


def _study_name(model: str) -> str | None:
    from clothopt.store import MODEL_PREFIX

    return model[len(MODEL_PREFIX) :] if model.startswith(MODEL_PREFIX) else None


def _resolved(args: argparse.Namespace) -> str:
    """The model argument as a file: ``study:NAME`` is the study's final model, fetched from
    its store (verified, cached) when it has one, else its local ``final/``."""
    name = _study_name(args.model)
    if name is None:
        return args.model
    from clothopt import study as study_mod
    from clothopt.final.store import MODEL_FILE, final_dir
    from clothopt.store import fetch_final_model

    st, _ = study_mod.load(name, args.storage)
    fetched = fetch_final_model(st, args.storage)
    local = final_dir(args.storage, name) / MODEL_FILE
    if fetched is None and not local.is_file():
        raise NotFound(f"study {name!r} has no final model here or in a store: finalize it first")
    return str(fetched or local)


def _publish_index(name: str, storage: str | None, index: Any) -> None:
    """An index built from a study's model, with --out: uploaded to the study's store too."""
    from clothopt import study as study_mod
    from clothopt.store import INDEX_ATTR, publish, store_of

    st, _ = study_mod.load(name, storage)
    store = store_of(st, storage)
    if store is not None:
        publish(st, store, INDEX_ATTR, [index])
        print(f"uploaded {index} to {store.url}", file=sys.stderr)


def _model_files(model: str) -> list[Any]:
    """The files a command reads with a model: the model and its classes.json."""
    from pathlib import Path

    from clothopt.predict import CLASSES_FILE

    path = Path(model).expanduser()
    return [path, path.with_name(CLASSES_FILE)]


# --------------------------------------------------------------------------- similar items


class IndexBuild(_Command):
    """Embed every image under a folder with a finalized model; write a similar-item index.

    The folder is read recursively in any layout; files that are not images are skipped and
    counted, an unreadable image is reported and left out. The index (one .npz file, written
    atomically) records the model's SHA-256 and the folder's fingerprint: `clothopt similar`
    refuses it once either changed. Search is exact (faiss Flat) below 100,000 images and
    approximate above (IVF: nlist lists, nprobe of them scanned per query; --index chooses).
    """

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        from clothopt.vector_index import AUTO_IVF_FROM, DEFAULT_NPROBE, INDEX_KINDS

        _model_arg(p)
        p.add_argument("dir", help="the catalogue: a folder of images (any layout)")
        p.add_argument("--out", help="index file (default: similar.npz beside the model)")
        p.add_argument(
            "--index",
            choices=INDEX_KINDS,
            default="auto",
            help=f"flat (exact), ivf, or auto: ivf from {AUTO_IVF_FROM:,} images on (auto)",
        )
        p.add_argument(
            "--nlist", type=_positive_int, help="IVF lists (4*sqrt(n), at most one per 16 images)"
        )
        p.add_argument(
            "--nprobe",
            type=_positive_int,
            help=f"IVF lists scanned per query ({DEFAULT_NPROBE}); `similar --nprobe` overrides",
        )

    def run(self, args: argparse.Namespace) -> int:
        from pathlib import Path

        from clothopt.outputs import INDEX, check_output_file
        from clothopt.similar import build_index

        study_name = _study_name(args.model)
        args.model = _resolved(args)
        out = Path(args.out) if args.out else Path(args.model).with_name("similar.npz")
        # the model, its classes and every file of the catalogue are read: none is the index
        catalogue = Path(args.dir).expanduser()
        images = [p for p in catalogue.rglob("*") if p.is_file()] if catalogue.is_dir() else []
        out = check_output_file(out, INDEX, [*_model_files(args.model), *images])
        quiet_import_keras()  # TensorFlow's start-up lines only with --verbose
        result = build_index(
            args.model,
            args.dir,
            out,
            log=lambda line: print(f"clothopt: {line}", file=sys.stderr),
            index_kind=args.index,
            nlist=args.nlist,
            nprobe=args.nprobe,
        )
        print(
            f"indexed {result.images} images ({result.dims} dims, {result.index}) "
            f"in {result.seconds:.1f} s: "
            f"{result.skipped} non-image files skipped, {len(result.failed)} unreadable; "
            f"wrote {result.out}"
        )
        if study_name is not None and args.out:
            _publish_index(study_name, args.storage, result.out)
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
        p.add_argument(
            "--nprobe", type=_positive_int, help="IVF lists to scan (default: the index's own)"
        )

    def run(self, args: argparse.Namespace) -> int:

        from clothopt.predict import expand_paths, load_classifier
        from clothopt.similar import query, rejections
        from clothopt.similar_html import write_html
        from clothopt.similar_index import load_index

        paths = expand_paths(args.images)
        if not paths:
            raise NotFound("no images in the folders given")
        for path in paths:
            if not path.is_file():
                raise NotFound(f"image not found: {path}")
        index = load_index(args.index, args.model, nprobe=args.nprobe)
        if args.html:  # before any work: --html is a file name, not a switch
            from clothopt.outputs import SIMILAR_PAGE, check_output_file

            model_path = args.model or index.meta["model"]
            inputs = [args.index, *_model_files(model_path), *args.images, *paths]
            html_out = check_output_file(args.html, SIMILAR_PAGE, inputs, "--html")
        with native_stderr_captured():  # TensorFlow start-up, "Not handling type DT_DOUBLE"
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
            # every rank any row has: a rejected first query must not hide the others' columns
            ranks = max((len(h) for h in results), default=0) or 1
            print(format_table(rows, ["image", *map(str, range(1, ranks + 1))]))
        if args.html:
            verdicts = [None if r is None else r["verdict"] for r in rejected]
            out = write_html(html_out, [str(p) for p in paths], results, verdicts)
            print(f"wrote {out}", file=sys.stderr)
        return 0
