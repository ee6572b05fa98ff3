"""The measurements behind ``make bench`` and ``benchmarks/gpu_bench.py``.

Each ``measure_*`` function takes :class:`Settings`, runs one section through clothopt's own
code paths (``FeatureCache``, ``extract_features_sizes``, ``HeadTrainer``, ``Objective``,
``study.optimize``) and returns a JSON-ready dict; what the library already owns (device,
resident memory, trial rows) is imported from it. Nothing here needs TensorFlow, so the same
code runs with ``KERAS_BACKEND=jax`` or ``torch``. Speed is reported, never asserted.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt import study as studies
from clothopt.data import Split, default_threads, iter_batches, load_batch, open_dataset
from clothopt.engine.runner import rss_mb
from clothopt.features import (
    FeatureCache,
    default_extract_batch,
    extract_features,
    extract_features_sizes,
    gpu_name,
)
from clothopt.model.backbones import get_backbone
from clothopt.model.head import HeadParams, HeadTrainer
from clothopt.objective import Objective
from clothopt.pipeline import batch_order
from clothopt.study import trial_rows
from clothopt.trial_spec import trial_seed

if TYPE_CHECKING:
    import keras
    import optuna

__all__ = ["SECTIONS", "Settings", "cpu_info", "link_subset", "run_section"]

# An option is recommended (made a default) only when it is at least this much faster (2-core
# noise is a few per cent) and its results stay within these tolerances.
MIN_SPEEDUP = 1.05
FEATURE_TOLERANCE = 1e-4  # max |feature difference| / max |feature|: float rounding only
F1_TOLERANCE = 0.01  # max |validation macro-F1 difference| over the trials, for precision

# Goals (issues #10.7, #12.2), shown against the figures in bench.md
PIPELINE_GOAL = 0.9  # whole extraction / bare forward pass, images per second
SEARCH_GOAL = 15.0  # end-to-end seconds / cached seconds, the grid of one image size
PAPER_HEAD_GOAL = 0.1  # seconds per trial, the paper's head with the reused HeadTrainer
WIDE_HEAD_GOAL = 1.0  # median seconds per trial, the wide trials below
OVERHEAD_GOAL = 0.3  # seconds per trial outside training (storage, sampling, attributes)

# The wide trials the goal names, as a `wide` study draws them: one hidden layer of 512, AdamW,
# cosine, standardized features of two sizes concatenated (image_size + wide_extra_size) with
# mirrored copies doubling the rows; each trial its own batch, epochs, learning rate, dropout,
# weight decay and label smoothing (continuous in the space, so no two trials share them)
# fmt: off
WIDE_HEAD: dict[str, Any] = {
    "hidden_layers": 1, "hidden_units": 512, "optimizer": "adamw", "schedule": "cosine",
    "normalize": "standardize",
}
# fmt: on


def wide_trials(seed: int, n: int) -> list[dict[str, Any]]:
    """``n`` wide heads' parameters drawn (from ``seed``) over the `wide` space's ranges, batch
    and epochs within what its studies mostly pick (batch 32/64, 10-30 epochs)."""
    rng = np.random.default_rng(seed)
    return [
        WIDE_HEAD
        | {
            "batch_size": int(rng.choice([32, 64])),
            "epochs": int(rng.integers(10, 31)),
            "learning_rate": float(10 ** rng.uniform(-4, math.log10(3e-2))),
            "dropout": float(rng.uniform(0.0, 0.6)),
            "weight_decay": float(10 ** rng.uniform(-6, -2)),
            "label_smoothing": float(rng.uniform(0.0, 0.2)),
        }
        for _ in range(n)
    ]


@dataclass
class Settings:
    """Everything a run measures with; stored in the results so a figure says how it was made."""

    data: str
    weights: str
    work: str  # scratch folder: subset links, SQLite files, feature caches
    backbone: str = "mobilenet_025"
    image_size: int = 300  # the search-cost size, and the first extraction size
    extract_sizes: list[int] = field(default_factory=lambda: [300, 400, 500])
    extract_batch: int = 0  # 0: clothopt's default for the device
    threads: int = 0  # decode threads; 0: clothopt's default
    extract_images: int = 512
    rounds: int = 3
    option_images: int = 256
    option_rounds: int = 2
    option_batches: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    option_threads: list[int] = field(default_factory=lambda: [1, 2, 4])
    precisions: list[str] = field(default_factory=list)  # empty: what the device supports
    batch_sizes_px: list[int] = field(default_factory=lambda: [300, 400, 500])
    batch_images: int = 128  # images per forward-rate figure in "batch size by image size"
    slow_variant_seconds: float = 45.0  # cap on a variant far slower than the baseline (XLA)
    train_images: int = 1000  # 0: the whole split
    val_images: int = 0
    search_batches: list[int] = field(default_factory=lambda: [32, 48, 64])
    search_lrs: list[float] = field(default_factory=lambda: [1e-2, 1e-3, 1e-4])
    epochs: int = 2
    wide_trials: int = 8  # measured wide heads (each its own rates), after one that compiles
    wide_extra_size: int = 224  # the wide heads' second feature size
    memory_train_images: int = 300
    memory_val_images: int = 100
    memory_space: str = "paper"
    repeats_runs: int = 3  # alternating (one fit, stacked fit) pairs per head
    repeats_members: int = 5  # R seeds or K folds in one stacked fit
    repeats_train_rows: int = 3068  # before mirroring (the real train split)
    repeats_wide_epochs: int = 20  # the wide space's default epochs
    seed: int = 0

    @property
    def batch(self) -> int:  # the extraction batch clothopt uses here
        return self.extract_batch or default_extract_batch()

    @property
    def decode_threads(self) -> int:
        return self.threads or default_threads()

    @property
    def grid(self) -> list[tuple[int, float]]:  # (batch size, learning rate) of the search
        return [(b, lr) for b in self.search_batches for lr in self.search_lrs]


# --------------------------------------------------------------------------- helpers


def cpu_info(name: str) -> str:
    """The first ``name`` line of /proc/cpuinfo ("model name", "flags"), "" elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(name)), "")


def _r(x: float, digits: int = 3) -> float:
    return round(float(x), digits)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _even_indices(n_total: int, n: int) -> np.ndarray:
    """``n`` indices spread evenly over ``range(n_total)`` (0: all).

    Splits list images class by class, so even spacing keeps every class's share.
    """
    if n <= 0 or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(np.int64))


def _subset(split: Split, idx: Sequence[int] | np.ndarray) -> Split:
    idx = np.asarray(idx, np.int64)
    paths = tuple(split.paths[i] for i in idx)
    return Split(split.name, split.root, split.classes, paths, split.labels[idx])


def link_subset(data: str | os.PathLike[str], dest: Path, counts: dict[str, int]) -> Path:
    """A data-set folder of symbolic links to ``counts[split]`` images of each split (0: all).

    The images are read in place; only links are written. Classes keep their shares.
    """
    if dest.is_dir():
        return dest
    ds = open_dataset(data)
    tmp = dest.with_name(dest.name + ".tmp")
    for split_name, n in counts.items():
        split = ds[split_name]
        for cls in ds.classes:  # every class folder, even one the subset leaves empty
            (tmp / split_name / cls).mkdir(parents=True, exist_ok=True)
        for i in _even_indices(len(split), n):
            path = Path(split.paths[i]).absolute()
            link = tmp / split_name / split.classes[split.labels[i]] / path.name
            if not link.exists():
                link.symlink_to(path)
    tmp.rename(dest)
    return dest


def _warm_page_cache(paths: Sequence[os.PathLike[str] | str]) -> None:
    # every path reads its files once from disk; timing starts with them in the page cache
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 20):
                pass


def _images_split(s: Settings, n: int, batch: int) -> Split:
    """``n`` training images (whole batches: one traced shape), in the page cache."""
    split = open_dataset(s.data, splits=("train",))["train"]
    split = _subset(split, _even_indices(len(split), max(batch, n - n % batch)))
    _warm_page_cache(split.paths)
    return split


def _extractor(
    s: Settings, size: int, precision: str = "float32", jit: bool | None = None
) -> keras.Model:
    """The extractor exactly as ``FeatureCache`` builds it (its own method builds it)."""
    cache = FeatureCache(None, precision=precision, jit_compile=jit)
    return cache._model(get_backbone(s.backbone), s.weights, s.seed, size)


def _forward(model: keras.Model, images: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """Seconds for the forward pass alone over ``images`` (uint8, already in memory)."""
    steps = range(0, len(images), batch)
    return _timed(
        lambda: np.concatenate(
            [np.asarray(model.predict_on_batch(images[i : i + batch]), np.float32) for i in steps]
        )
    )


def _pipeline(
    model: keras.Model, split: Split, size: int, batch: int, threads: int
) -> tuple[float, np.ndarray]:
    """Seconds for the whole extraction: read, decode, resize, preprocess, forward pass."""
    return _timed(lambda: extract_features(model, split, size, "nearest", batch, threads))


def _decode_only(split: Split, size: int, batch: int, threads: int) -> float:
    return _timed(
        lambda: sum(1 for _ in iter_batches(split.paths, size, batch, "nearest", threads))
    )[0]


def _warm(model: keras.Model, images: np.ndarray, batch: int) -> float:
    """Trace/compile the forward pass (full batch); seconds of one batch after that."""
    model.predict_on_batch(images[:batch])
    return _timed(lambda: model.predict_on_batch(images[:batch]))[0]


def _cpu_ms_per_image(fn: Callable[[], Any], n: int) -> float:
    """CPU milliseconds per image of ``fn`` over all of this process's threads."""
    start = time.process_time()
    fn()
    return 1000 * (time.process_time() - start) / n


def _feature_diff(x: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    n = min(len(x), len(ref))
    if not n:
        return {"max_abs_diff": 0.0, "mean_abs_diff": 0.0, "max_rel_diff": 0.0}
    diff = np.abs(x[:n].astype(np.float64) - ref[:n])
    scale = float(np.abs(ref[:n]).max()) or 1.0
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_rel_diff": float(diff.max() / scale),
    }


# --------------------------------------------------------------------------- extraction


def _extraction_at(
    s: Settings, split: Split, size: int, model: keras.Model, gpu: str | None
) -> dict[str, Any]:
    images, batch, threads, n = load_batch(split.paths, size), s.batch, s.decode_threads, len(split)
    _warm(model, images, batch)
    fwd, pipe, dec = [], [], []
    for _ in range(s.rounds):  # interleaved, so background load hits both alike
        t_fwd, x_fwd = _forward(model, images, batch)
        t_pipe, x_pipe = _pipeline(model, split, size, batch, threads)
        dec.append(n / _decode_only(split, size, batch, threads))
        fwd.append(n / t_fwd)
        pipe.append(n / t_pipe)
    ratio = median(pipe) / median(fwd)
    out: dict[str, Any] = {
        "image_size": size,
        "forward_img_s": _r(median(fwd), 1),
        "pipeline_img_s": _r(median(pipe), 1),
        "decode_only_img_s": _r(median(dec), 1),
        "pipeline_vs_forward": _r(ratio),
        "pipeline_vs_forward_per_round": [_r(p / f) for p, f in zip(pipe, fwd, strict=True)],
        "forward_img_s_per_round": [_r(v, 1) for v in fwd],
        "pipeline_img_s_per_round": [_r(v, 1) for v in pipe],
        "same_features": _feature_diff(x_pipe, x_fwd)["max_abs_diff"] == 0.0,
        "met": ratio >= PIPELINE_GOAL,
    }
    if not gpu:
        # On CPU decoding and the forward pass share the same cores, so the pipeline can reach
        # at most forward / (forward + decode) of the bare forward rate, in CPU time per image.
        f_cpu = _cpu_ms_per_image(lambda: _forward(model, images, batch), n)
        d_cpu = _cpu_ms_per_image(lambda: _decode_only(split, size, batch, threads), n)
        bound = _r(f_cpu / (f_cpu + d_cpu))
        out["forward_cpu_ms_per_image"] = _r(f_cpu, 2)
        out["decode_cpu_ms_per_image"] = _r(d_cpu, 2)
        out["cpu_bound"] = bound
        out["pipeline_vs_bound"] = _r(ratio / bound)
    return out


def measure_extraction(s: Settings) -> dict[str, Any]:
    """Whole extraction against the forward pass alone: same backbone, size, batch, images;
    then every size at once (``extract_features_sizes``: each image decoded once) against the
    bare forward passes of every size, and against one pipeline per size."""
    import keras

    gpu = gpu_name()
    split = _images_split(s, s.extract_images, s.batch)
    sizes = [s.image_size, *(x for x in s.extract_sizes if x != s.image_size)]
    models = {size: _extractor(s, size) for size in sizes}
    rows = [_extraction_at(s, split, size, models[size], gpu) for size in sizes]
    shared = None
    if len(sizes) > 1:
        n, args = len(split), (models, split, "nearest", s.batch, s.decode_threads)
        secs = median(_timed(lambda: extract_features_sizes(*args))[0] for _ in range(s.rounds))
        forward = sum(n / r["forward_img_s"] for r in rows)  # seconds of the bare passes
        shared = {
            "sizes": sizes,
            "seconds": _r(secs),
            "forward_seconds": _r(forward),
            "pipeline_vs_forward": _r(forward / secs),
            "speedup_vs_size_by_size": _r(sum(n / r["pipeline_img_s"] for r in rows) / secs),
            "met": forward / secs >= PIPELINE_GOAL,
        }
    models.clear()
    keras.backend.clear_session()
    # the headline: the size the search-cost figures use
    return rows[0] | {
        "backbone": s.backbone,
        "batch_size": s.batch,
        "decode_threads": s.decode_threads,
        "images": len(split),
        "rounds": s.rounds,
        "device": gpu or "cpu",
        "goal": PIPELINE_GOAL,
        "sizes": rows,
        "shared_decode": shared,
    }


# --------------------------------------------------------------------------- head training


def _search_counts(s: Settings) -> dict[str, int]:
    return {"train": s.train_images, "validation": s.val_images, "test": 20}


def _search_features(
    s: Settings, cache: FeatureCache, sizes: Sequence[int] = (), flip: bool = False
) -> tuple[Any, ...]:
    """HeadTrainer's data arguments: the search subset's train and validation features, at
    ``sizes`` (default: image_size) concatenated, with ``flip`` mirrored train rows after the
    plain ones (as a trial with ``image_sizes`` and ``flip`` gets them)."""
    data = link_subset(s.data, Path(s.work) / "search-data", _search_counts(s))
    ds = open_dataset(data, splits=("train", "validation"))
    spec = get_backbone(s.backbone)

    def features(split: str, mirrored: bool) -> tuple[np.ndarray, np.ndarray]:
        got = [
            cache.get(spec, s.weights, s.seed, size, "nearest", ds[split], flip=mirrored)
            for size in sizes or (s.image_size,)
        ]
        return np.concatenate([f.x for f in got], 1), got[0].y

    (x_tr, y_tr), (x_va, y_va) = features("train", False), features("validation", False)
    if flip:
        x_fl, y_fl = features("train", True)
        x_tr, y_tr = np.concatenate([x_tr, x_fl]), np.concatenate([y_tr, y_fl])
    cache.release_model()
    return x_tr, y_tr, x_va, y_va, ds.classes


def _train_trials(
    s: Settings, trainer: HeadTrainer, data: tuple[Any, ...], trials: list[dict[str, Any]]
) -> tuple[list[float], list[float]]:
    """Seconds and validation macro-F1 of one trial per HeadParams keywords in ``trials``."""
    secs, f1s = [], []
    for head in trials:
        point = {"image_size": s.image_size} | {k: head[k] for k in ("batch_size", "learning_rate")}
        start = time.perf_counter()
        result = trainer.train(*data, HeadParams(**head), trial_seed(s.seed, point), batch_order)
        secs.append(time.perf_counter() - start)
        f1s.append(result.epoch_f1[-1])
    return secs, f1s


def measure_head(s: Settings) -> dict[str, Any]:
    """Seconds per trial of ``HeadTrainer`` (one compiled model per head shape, reused) on the
    search subset's cached features: the paper's head over the search grid, and wide trials
    (:func:`wide_trials`) on two sizes' features with mirrored rows."""
    cache = FeatureCache(Path(s.work) / "features/head", s.batch, s.threads)
    paper_data = _search_features(s, cache)
    wide_data = _search_features(s, cache, (s.image_size, s.wide_extra_size), flip=True)
    trainer = HeadTrainer()
    out: dict[str, Any] = {"train_images": len(paper_data[1]), "image_size": s.image_size}
    paper = [{"epochs": s.epochs, "batch_size": b, "learning_rate": lr} for b, lr in s.grid]
    # a trial before the measured ones pays the shape's one compile (once per study), apart
    wide = wide_trials(s.seed, s.wide_trials + 1)
    heads = (
        ("paper", paper_data, [paper[0], *paper], {"epochs": s.epochs}, PAPER_HEAD_GOAL),
        ("wide", wide_data, wide, WIDE_HEAD | {"epochs": "10-30"}, WIDE_HEAD_GOAL),
    )
    for name, data, trials, shown, goal in heads:
        secs, f1s = _train_trials(s, trainer, data, trials)
        first, secs, f1s = secs[0], secs[1:], f1s[1:]
        out[name] = {
            "params": shown,
            "trials": len(secs),
            "train_rows": len(data[1]),
            "feature_dim": int(data[0].shape[1]),
            "seconds_per_trial": _r(median(secs)),
            "seconds_max": _r(max(secs)),
            "seconds_first_with_compile": _r(first),
            "f1_median": _r(median(f1s), 4),
            "goal_seconds": goal,
            "met": median(secs) <= goal,
        }
    return out


# --------------------------------------------------------------------------- options


@dataclass
class _Variant:
    option: str
    value: Any
    batch: int
    threads: int
    precision: str = "float32"
    jit: bool | None = None


def _precisions(s: Settings, gpu: str | None) -> tuple[list[str], dict[str, str]]:
    """Precisions worth measuring here, and why the others are skipped."""
    if s.precisions or gpu:
        return list(s.precisions or ["float32", "float16", "bfloat16"]), {}
    skipped = {"float16": "float16 is for GPUs; CPUs emulate it"}
    if {"avx512_bf16", "amx_bf16"} & set(cpu_info("flags").split()):
        return ["float32", "bfloat16"], skipped
    skipped["bfloat16"] = "this CPU has no bfloat16 instructions (avx512_bf16 / amx_bf16)"
    return ["float32"], skipped


def _option_row(
    v: _Variant, n: int, speed: dict[str, list[float]], base: list[float], diff: dict[str, float]
) -> dict[str, Any]:
    pipe = median(speed["pipe"])
    per_round = [a / b for a, b in zip(speed["pipe"], base, strict=True)]
    row: dict[str, Any] = {
        "option": v.option,
        "value": v.value,
        "images": n,
        "pipeline_img_s": _r(pipe, 1),
        "forward_img_s": _r(median(speed["fwd"]), 1),
        "speedup": _r(pipe / median(base)),
        **{k: float(f"{x:.3g}") for k, x in diff.items()},
        "speedup_per_round": [_r(x) for x in per_round],
        # a win: faster by the margin overall and not slower in any round (load is noisy)
        "wins": v.option != "baseline"
        and pipe >= MIN_SPEEDUP * median(base)
        and min(per_round) >= 1.0,
    }
    if v.option not in ("baseline", "precision"):
        row["within_tolerance"] = row["max_rel_diff"] <= FEATURE_TOLERANCE
        row["tolerance"] = f"max |dx| / max |x| <= {FEATURE_TOLERANCE:g}"
    return row


def measure_options(s: Settings) -> dict[str, Any]:
    """Each extraction option against the baseline: speed, and how much the features change."""
    gpu, batch0, threads0 = gpu_name(), s.batch, s.decode_threads
    precisions, skipped = _precisions(s, gpu)
    base = _Variant("baseline", "-", batch0, threads0)
    variants = [base]
    variants += [
        _Variant("precision", p, batch0, threads0, p) for p in precisions if p != "float32"
    ]
    # the extraction batch size changes only the forward pass: _batch_by_size measures it at
    # every grid size, where its best value differs
    variants += [
        _Variant("decode_threads", t, batch0, t) for t in s.option_threads if t != threads0
    ]
    split = _images_split(s, max(s.option_images, batch0), batch0)
    images = load_batch(split.paths, s.image_size)
    models: dict[tuple[str, bool | None], keras.Model] = {}

    def model_for(v: _Variant) -> keras.Model:
        if (v.precision, v.jit) not in models:
            models[(v.precision, v.jit)] = _extractor(s, s.image_size, v.precision, v.jit)
        return models[(v.precision, v.jit)]

    auto_jit = bool(model_for(base).jit_compile)  # what Keras's "auto" chose here
    variants.append(_Variant("jit_compile", not auto_jit, batch0, threads0, jit=not auto_jit))
    n_images, base_per_image = [], 0.0
    for v in variants:
        per_image = _warm(model_for(v), images, v.batch) / v.batch
        base_per_image = base_per_image or per_image
        n = len(images) - len(images) % v.batch
        if per_image > 3 * base_per_image:
            # far slower than the baseline (XLA on CPU): fewer images, so it stays bounded
            cap = int(s.slow_variant_seconds / per_image / 2 / max(s.option_rounds, 1))
            n = max(v.batch * 2, min(n, cap - cap % v.batch))
        n_images.append(n)
    speed = [{"fwd": [], "pipe": []} for _ in variants]
    feats: list[np.ndarray] = []
    for _ in range(s.option_rounds):
        for i, (v, n) in enumerate(zip(variants, n_images, strict=True)):
            sub = _subset(split, range(n))  # the same first n images as images[:n]
            speed[i]["fwd"].append(n / _forward(model_for(v), images[:n], v.batch)[0])
            t_pipe, x = _pipeline(model_for(v), sub, s.image_size, v.batch, v.threads)
            speed[i]["pipe"].append(n / t_pipe)
            if len(feats) == i:  # the first round's features
                feats.append(x)
    rows = [
        _option_row(v, n, sp, speed[0]["pipe"], _feature_diff(x, feats[0]))
        for v, n, sp, x in zip(variants, n_images, speed, feats, strict=True)
    ]
    models.clear()  # free the extractors before the next measurement builds its own
    if len(precisions) > 1:  # each precision's features, trial F1 of the search subset
        f1 = {p: _precision_f1(s, p) for p in precisions}
        for row in rows:
            if row["option"] == "precision":
                diffs = [abs(a - b) for a, b in zip(f1["float32"], f1[row["value"]], strict=True)]
                row["f1_float32"] = [_r(x, 4) for x in f1["float32"]]
                row["f1"] = [_r(x, 4) for x in f1[row["value"]]]
                row["max_f1_diff"] = _r(max(diffs), 4)
                row["within_tolerance"] = max(diffs) <= F1_TOLERANCE
                row["tolerance"] = f"max |dF1| <= {F1_TOLERANCE} over {len(diffs)} trials"
    for row in rows:
        row["recommended"] = bool(row["wins"] and row.get("within_tolerance", False))
    return {
        "backbone": s.backbone,
        "image_size": s.image_size,
        "baseline": {
            "precision": "float32",
            "jit_compile": auto_jit,
            "batch_size": batch0,
            "decode_threads": threads0,
        },
        "rounds": s.option_rounds,
        "device": gpu or "cpu",
        "min_speedup": MIN_SPEEDUP,
        "variants": rows,
        "batch_by_size": _batch_by_size(s, batch0),
        "skipped": skipped,
    }


def _precision_f1(s: Settings, precision: str) -> list[float]:
    """Validation macro-F1 of the search grid's trials on ``precision``'s features."""
    data = _search_features(s, FeatureCache(None, s.batch, s.threads, precision=precision))
    paper = [{"epochs": s.epochs, "batch_size": b, "learning_rate": lr} for b, lr in s.grid]
    return _train_trials(s, HeadTrainer(), data, paper)[1]


def _batch_by_size(s: Settings, batch0: int) -> dict[str, Any]:
    """Forward-pass rate of each extraction batch size at each of the grid's image sizes.

    The batch size changes only the forward pass (decoding is per image), and its best value
    may depend on the image size; the grid's extraction time weighs every size.
    """
    import keras

    batches = sorted({batch0, *s.option_batches})
    split = _images_split(s, max(batches) * max(1, s.batch_images // max(batches)), max(batches))
    rows = []
    for size in s.batch_sizes_px:
        images, model = load_batch(split.paths, size), _extractor(s, size)
        for b in batches:
            _warm(model, images, b)
        rates: dict[int, list[float]] = {b: [] for b in batches}
        for r in range(s.option_rounds + 1):
            for b in batches if r % 2 == 0 else batches[::-1]:  # alternate the order
                rates[b].append(len(images) / _forward(model, images, b)[0])
        rows.append({"image_size": size, "img_s": {b: _r(median(v), 1) for b, v in rates.items()}})
        keras.backend.clear_session()
    # seconds to extract 1000 images at every size, per batch size: what a grid pays
    grid = {b: sum(1000 / row["img_s"][b] for row in rows) for b in batches}
    best = min(grid, key=lambda b: grid[b])
    return {
        "images": len(split),
        "rounds": s.option_rounds + 1,
        "sizes": rows,
        "grid_seconds_per_1000_images": {b: _r(v, 1) for b, v in grid.items()},
        "default": batch0,
        "best": best,
        "best_speedup": _r(grid[batch0] / grid[best]),
        "recommended": best != batch0 and grid[batch0] >= MIN_SPEEDUP * grid[best],
    }


# --------------------------------------------------------------------------- studies


def _run_study(
    s: Settings,
    name: str,
    subset: str,
    counts: dict[str, int],
    space: str,
    use_cache: bool = True,
    objective: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Link ``counts`` images of each split as ``subset``, create a study on SQLite and run it with
    ``study.optimize`` as ``clothopt study run`` does (images in the page cache first).

    Returns its figures: images, trials, seconds of ``optimize`` alone, the extraction settings
    it ran with and its trial rows (by number, with each trial's seconds and resident MiB).
    """
    import keras

    work = Path(s.work)
    data = link_subset(s.data, work / subset, counts)
    st, config = studies.create(
        backbone=s.backbone,
        space=space,
        name=name,
        storage=f"sqlite:///{work / 'studies' / (name + '.db')}",
        data=str(data),
        weights=s.weights,
        seed=s.seed,
        use_cache=use_cache,
        cache_dir=str(work / "features" / name),
    )
    ds = open_dataset(config.data)
    _warm_page_cache([p for n in ("train", "validation") for p in ds[n].paths])
    cache = FeatureCache(config.cache_dir, config.extract_batch_size, config.threads)
    obj = objective(config) if objective is not None else Objective(config, ds, cache)
    keras.backend.clear_session()
    gc.collect()
    summary = studies.optimize(st, config, obj, progress=False)
    trials = {t.number: t for t in st.get_trials(deepcopy=False)}
    rows = sorted(trial_rows(st), key=lambda r: r["number"])
    for r in rows:
        t = trials[r["number"]]
        r["seconds"] = _r(t.duration.total_seconds()) if t.duration else None
        r["rss_mb"] = t.user_attrs.get("rss_mb")
    return {
        "train_images": len(ds["train"]),
        "val_images": len(ds["validation"]),
        "trials": summary.ran,
        "complete": summary.complete,
        "seconds": _r(summary.seconds),
        "extract_batch": cache.batch_size,
        "decode_threads": cache.threads,
        "trial_rows": rows,
    }


def measure_search(s: Settings, path: str) -> dict[str, Any]:
    """The grid of one image size (batch x learning rate) by one path, through study.optimize."""
    assert path in ("end_to_end", "cached"), path
    space = Path(s.work) / f"grid-{s.image_size}px.toml"
    space.parent.mkdir(parents=True, exist_ok=True)
    lrs = ", ".join(repr(float(x)) for x in s.search_lrs)
    space.write_text(
        f'description = "benchmark grid: {space.stem}"\nsampler = "grid"\nepochs = {s.epochs}\n'
        f"\n[params]\nimage_size = [{s.image_size}]\nbatch_size = {list(s.search_batches)}\n"
        f"learning_rate = [{lrs}]\n"
    )
    out = _run_study(
        s, f"search-{path}", "search-data", _search_counts(s), str(space), path == "cached"
    )
    out["trials"] = len(out["trial_rows"])
    return {"path": path, "image_size": s.image_size, "epochs": s.epochs, **out}


def measure_overhead(s: Settings) -> dict[str, Any]:
    """Storage and sampling per trial: the paper grid with an objective that trains nothing."""

    def trivial(config: Any) -> Callable[[optuna.Trial], float]:
        def objective(trial: optuna.Trial) -> float:
            config.space.suggest(trial)  # the sampling a real trial does
            return 0.5

        return objective

    counts = {"train": 40, "validation": 20, "test": 20}
    out = _run_study(s, "overhead", "tiny-data", counts, "paper", objective=trivial)
    per_trial = [r["seconds"] for r in out["trial_rows"] if r["state"] == "COMPLETE"]
    return {
        "storage": "sqlite",
        "trials": out["trials"],
        "seconds": out["seconds"],
        "ms_per_trial": _r(1000 * out["seconds"] / max(out["trials"], 1), 1),
        "ms_per_trial_inside": _r(1000 * median(per_trial), 1),
    }


def _within_block_slope(rows: list[dict[str, Any]]) -> float:
    """MiB per trial, fitted within each image size's run of trials (after its first trial).

    A new size extracts features and may step memory up once; growth that repeats trial after
    trial (a leak) shows as a positive slope within the runs.
    """
    blocks: dict[Any, list[tuple[int, float]]] = {}
    for r in rows:
        if r["rss_mb"] is not None and r["state"] == "COMPLETE":
            blocks.setdefault(r["image_size"], []).append((r["number"], r["rss_mb"]))
    num = den = 0.0
    for pts in blocks.values():
        if len(pts) < 3:  # the first trial of a size is left out
            continue
        x, y = np.array(pts[1:], float).T
        num += float(((x - x.mean()) * (y - y.mean())).sum())
        den += float(((x - x.mean()) ** 2).sum())
    return num / den if den else 0.0


def measure_memory(s: Settings) -> dict[str, Any]:
    """Resident memory over a whole grid on the cached path (run in a fresh process)."""
    counts = {"train": s.memory_train_images, "validation": s.memory_val_images, "test": 20}
    rss_before = rss_mb()
    out = _run_study(s, "memory", "memory-data", counts, s.memory_space)
    rows = out.pop("trial_rows")
    rss = [r["rss_mb"] for r in rows if r["rss_mb"] is not None]
    slope_all = float(np.polyfit(np.arange(len(rss)), rss, 1)[0]) if len(rss) > 1 else 0.0
    slope = _within_block_slope(rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "space": s.memory_space,
        **{k: out[k] for k in ("trials", "complete", "train_images", "val_images", "seconds")},
        "rss_before_mb": _r(rss_before, 1),
        "rss_mb": [_r(x, 1) for x in rss],
        "rss_first_mb": _r(rss[0], 1) if rss else None,
        "rss_last_mb": _r(rss[-1], 1) if rss else None,
        "rss_max_mb": _r(max(rss), 1) if rss else None,
        "peak_rss_mb": _r(peak, 1),
        "slope_mb_per_trial": _r(slope, 2),
        "slope_all_mb_per_trial": _r(slope_all, 2),
        "flat": abs(slope) <= 1.0,
        "flat_rule": "within-size slope of resident MiB per trial <= 1.0",
    }


# --------------------------------------------------------------------------- dispatch

SECTIONS: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "extraction": measure_extraction,
    "options": measure_options,
    "head": measure_head,
    "search_e2e": lambda s: measure_search(s, "end_to_end"),
    "search_cached": lambda s: measure_search(s, "cached"),
    "overhead": measure_overhead,
    "memory": measure_memory,
    "repeats": lambda s: _measure_repeats(s),
}


def _measure_repeats(s: Settings) -> dict[str, Any]:
    from benchmarks.repeats import measure_repeats  # it imports Settings from here

    return measure_repeats(s)


def run_section(name: str, s: Settings) -> dict[str, Any]:
    import keras

    if name not in SECTIONS:
        raise ValueError(f"unknown section {name!r} (choose from {', '.join(SECTIONS)})")
    seconds, out = _timed(lambda: SECTIONS[name](s))
    return out | {"section_seconds": _r(seconds, 1), "keras_backend": keras.backend.backend()}
