"""The measurements behind ``make bench`` and ``benchmarks/gpu_bench.py``.

Each ``measure_*`` function takes :class:`Settings`, runs one benchmark section with the real
clothopt code paths (``extract_features``, ``FeatureCache``, ``HeadTrainer``, ``Objective``,
``study.optimize``) and returns a JSON-ready dict; what the library already owns (device,
resident memory, trial rows) is imported from it. Nothing here needs TensorFlow, so the same
code runs with ``KERAS_BACKEND=jax`` or ``torch``. Speed is reported, never asserted.
"""

from __future__ import annotations

import gc
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt.engine.runner import rss_mb
from clothopt.features import gpu_name
from clothopt.study import trial_rows

if TYPE_CHECKING:
    import keras
    import optuna

    from clothopt.data import Split

__all__ = [
    "F1_TOLERANCE",
    "FEATURE_TOLERANCE",
    "MIN_SPEEDUP",
    "SECTIONS",
    "Settings",
    "cpu_flags",
    "keras_backend",
    "link_subset",
    "measure_extraction",
    "measure_head",
    "measure_memory",
    "measure_options",
    "measure_overhead",
    "measure_search",
    "run_section",
]

# An option is recommended (made a default) only when it is at least this much faster (2-core
# noise is a few per cent) and its results stay within these tolerances.
MIN_SPEEDUP = 1.05
FEATURE_TOLERANCE = 1e-4  # max |feature difference| / max |feature|: float rounding only
F1_TOLERANCE = 0.01  # max |validation macro-F1 difference| over the trials, for precision

SECTIONS = ("extraction", "options", "head", "search_e2e", "search_cached", "overhead", "memory")

# Goals (issues #10.7, #12.2), shown against the figures in bench.md
PIPELINE_GOAL = 0.9  # whole extraction / bare forward pass, images per second
SEARCH_GOAL = 15.0  # end-to-end seconds / cached seconds, the grid of one image size
PAPER_HEAD_GOAL = 0.1  # seconds per trial, the paper's head with the reused HeadTrainer
WIDE_HEAD_GOAL = 1.0  # median seconds per trial, WIDE_HEAD
OVERHEAD_GOAL = 0.3  # seconds per trial outside training (storage, sampling, attributes)

# The wide head the goal names: one hidden layer of 512, dropout, AdamW, cosine schedule
WIDE_HEAD: dict[str, Any] = {
    "hidden_layers": 1,
    "dropout": 0.5,
    "label_smoothing": 0.1,
    "optimizer": "adamw",
    "weight_decay": 1e-4,
    "schedule": "cosine",
    "normalize": "l2",
    "epochs": 15,
}


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
    memory_train_images: int = 300
    memory_val_images: int = 100
    memory_space: str = "paper"
    seed: int = 0


# --------------------------------------------------------------------------- helpers


def keras_backend() -> str:
    import keras

    return str(keras.backend.backend())


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _peakrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _even_indices(n_total: int, n: int) -> np.ndarray:
    """``n`` indices spread evenly over ``range(n_total)``.

    Splits list images class by class, so even spacing keeps every class's share.
    """
    if n <= 0 or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(np.int64))


def subset_split(split: Split, n: int) -> Split:
    from clothopt.data import Split

    idx = _even_indices(len(split), n)
    return Split(
        split.name,
        split.root,
        split.classes,
        tuple(split.paths[i] for i in idx),
        split.labels[idx],
    )


def _head(split: Split, n: int) -> Split:
    from clothopt.data import Split

    return Split(split.name, split.root, split.classes, split.paths[:n], split.labels[:n])


def link_subset(data: str | os.PathLike[str], dest: Path, counts: dict[str, int]) -> Path:
    """A data-set folder of symbolic links to ``counts[split]`` images of each split (0: all).

    The images are read in place; only links are written. Classes keep their shares.
    """
    from clothopt.data import open_dataset

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


def _r(x: float, digits: int = 3) -> float:
    return round(float(x), digits)


def _extractor(
    s: Settings, size: int, precision: str = "float32", jit: bool | None = None
) -> keras.Model:
    """The extractor exactly as ``FeatureCache`` builds it."""
    from clothopt.model.backbones import get_backbone
    from clothopt.model.compose import compose

    model = compose(get_backbone(s.backbone), size, s.weights, s.seed, precision=precision)
    if jit is not None:
        model.jit_compile = jit
    return model


def _threads(s: Settings) -> int:
    from clothopt.data import default_threads

    return s.threads or default_threads()


def _batch(s: Settings) -> int:
    from clothopt.features import default_extract_batch

    return s.extract_batch or default_extract_batch()


def _forward(model: keras.Model, images: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """Seconds for the forward pass alone over ``images`` (uint8, already in memory)."""
    out = []
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        out.append(np.asarray(model.predict_on_batch(images[i : i + batch]), np.float32))
    return time.perf_counter() - start, np.concatenate(out)


def _pipeline(
    model: keras.Model, split: Split, size: int, batch: int, threads: int
) -> tuple[float, np.ndarray]:
    """Seconds for the whole extraction: read, decode, resize, preprocess, forward pass."""
    from clothopt.features import extract_features

    start = time.perf_counter()
    x = extract_features(model, split, size, "nearest", batch, threads)
    return time.perf_counter() - start, x


def _decode_only(split: Split, size: int, batch: int, threads: int) -> float:
    from clothopt.data import iter_batches

    start = time.perf_counter()
    for _ in iter_batches(split.paths, size, batch, "nearest", threads):
        pass
    return time.perf_counter() - start


def _warm(model: keras.Model, images: np.ndarray, batch: int) -> float:
    """Trace/compile the forward pass (full batch); seconds of one batch after that."""
    first = images[:batch]
    model.predict_on_batch(first)
    start = time.perf_counter()
    model.predict_on_batch(first)
    return time.perf_counter() - start


def _cpu_ms_per_image(fn: Callable[[], Any], n: int) -> float:
    """CPU milliseconds per image of ``fn`` over all of this process's threads."""
    start = time.process_time()
    fn()
    return 1000 * (time.process_time() - start) / n


def _feature_diff(x: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    n = min(len(x), len(ref))
    diff = np.abs(x[:n].astype(np.float64) - ref[:n])
    scale = float(np.abs(ref[:n]).max()) or 1.0
    return {
        "max_abs_diff": float(diff.max()) if n else 0.0,
        "mean_abs_diff": float(diff.mean()) if n else 0.0,
        "max_rel_diff": float(diff.max() / scale) if n else 0.0,
    }


def _images_split(s: Settings, n: int, batch: int) -> Split:
    """``n`` training images (whole batches), in the page cache."""
    from clothopt.data import open_dataset

    n = max(batch, n - n % batch)  # whole batches: one traced shape, the same work per batch
    split = subset_split(open_dataset(s.data, splits=("train",))["train"], n)
    _warm_page_cache(split.paths)
    return split


# --------------------------------------------------------------------------- extraction


def _extraction_at(
    s: Settings, split: Split, size: int, model: keras.Model, gpu: str | None
) -> dict[str, Any]:
    from clothopt.data import load_batch

    batch, threads = _batch(s), _threads(s)
    images = load_batch(split.paths, size)
    _warm(model, images, batch)
    fwd, pipe, dec = [], [], []
    for _ in range(s.rounds):  # interleaved, so background load hits both alike
        t_fwd, x_fwd = _forward(model, images, batch)
        t_pipe, x_pipe = _pipeline(model, split, size, batch, threads)
        dec.append(len(split) / _decode_only(split, size, batch, threads))
        fwd.append(len(split) / t_fwd)
        pipe.append(len(split) / t_pipe)
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
        f_cpu = _cpu_ms_per_image(lambda: _forward(model, images, batch), len(split))
        d_cpu = _cpu_ms_per_image(lambda: _decode_only(split, size, batch, threads), len(split))
        out["forward_cpu_ms_per_image"] = _r(f_cpu, 2)
        out["decode_cpu_ms_per_image"] = _r(d_cpu, 2)
        out["cpu_bound"] = _r(f_cpu / (f_cpu + d_cpu))
        out["pipeline_vs_bound"] = _r(ratio / out["cpu_bound"])
    return out


def _shared_decode(
    s: Settings, split: Split, models: dict[int, keras.Model], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """All sizes in one pass (``extract_features_sizes``: each image decoded once) against the
    bare forward passes of every size, and against one pipeline per size."""
    from clothopt.features import extract_features_sizes

    n, secs = len(split), []
    for _ in range(s.rounds):
        start = time.perf_counter()
        extract_features_sizes(models, split, "nearest", _batch(s), _threads(s))
        secs.append(time.perf_counter() - start)
    forward = sum(n / r["forward_img_s"] for r in rows)  # seconds of the bare passes
    one_by_one = sum(n / r["pipeline_img_s"] for r in rows)
    ratio = forward / median(secs)
    return {
        "sizes": list(models),
        "seconds": _r(median(secs)),
        "forward_seconds": _r(forward),
        "pipeline_vs_forward": _r(ratio),
        "speedup_vs_size_by_size": _r(one_by_one / median(secs)),
        "met": ratio >= PIPELINE_GOAL,
    }


def measure_extraction(s: Settings) -> dict[str, Any]:
    """Whole extraction against the forward pass alone: same backbone, size, batch, images;
    then every size at once, decoding each image once."""
    import keras

    gpu = gpu_name()
    split = _images_split(s, s.extract_images, _batch(s))
    sizes = [s.image_size, *(x for x in s.extract_sizes if x != s.image_size)]
    models = {size: _extractor(s, size) for size in sizes}
    rows = [_extraction_at(s, split, size, models[size], gpu) for size in sizes]
    shared = _shared_decode(s, split, models, rows) if len(sizes) > 1 else None
    models.clear()
    keras.backend.clear_session()
    return {
        "backbone": s.backbone,
        "batch_size": _batch(s),
        "decode_threads": _threads(s),
        "images": len(split),
        "rounds": s.rounds,
        "device": gpu or "cpu",
        "goal": PIPELINE_GOAL,
        "sizes": rows,
        "shared_decode": shared,
        # the headline: the size the search-cost figures use
        **{k: v for k, v in rows[0].items() if k != "met"},
        "met": rows[0]["met"],
    }


# --------------------------------------------------------------------------- head training


def measure_head(s: Settings) -> dict[str, Any]:
    """Seconds per trial of ``HeadTrainer`` (one compiled model per head shape, reused) on the
    search subset's cached features: the paper's head over the search grid, and WIDE_HEAD."""
    from clothopt.data import open_dataset
    from clothopt.features import FeatureCache
    from clothopt.model.backbones import get_backbone
    from clothopt.model.head import HeadParams, HeadTrainer
    from clothopt.objective import batch_order, trial_seed

    data = link_subset(s.data, Path(s.work) / "search-data", _search_counts(s))
    ds = open_dataset(data, splits=("train", "validation"))
    cache = FeatureCache(Path(s.work) / "features" / "head", _batch(s), _threads(s))
    tr, va = (
        cache.get(get_backbone(s.backbone), s.weights, s.seed, s.image_size, "nearest", ds[n])
        for n in ("train", "validation")
    )
    cache.release_model()
    trainer, data_args = HeadTrainer(), (tr.x, tr.y, va.x, va.y, ds.classes)
    grid = [(b, lr) for b in s.search_batches for lr in s.search_lrs]
    out: dict[str, Any] = {"train_images": len(tr.y), "image_size": s.image_size}
    for name, extra, goal in (
        ("paper", {"epochs": s.epochs}, PAPER_HEAD_GOAL),
        ("wide", WIDE_HEAD, WIDE_HEAD_GOAL),
    ):
        b0, lr0 = grid[0]
        # the shape's one compile (once per study) is not a trial's cost: measured apart
        start = time.perf_counter()
        trainer.train(
            *data_args, HeadParams(learning_rate=lr0, batch_size=b0, **extra), 0, batch_order
        )
        first = time.perf_counter() - start
        secs, f1s = [], []
        for b, lr in grid:
            seed = trial_seed(
                s.seed, {"image_size": s.image_size, "batch_size": b, "learning_rate": lr}
            )
            start = time.perf_counter()
            res = trainer.train(
                *data_args, HeadParams(learning_rate=lr, batch_size=b, **extra), seed, batch_order
            )
            secs.append(time.perf_counter() - start)
            f1s.append(res.epoch_f1[-1])
        out[name] = {
            "params": extra,
            "trials": len(secs),
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
    precision: str = "float32"
    jit: bool | None = None
    batch: int = 32
    threads: int = 2


def _precisions(s: Settings, gpu: str | None) -> tuple[list[str], dict[str, str]]:
    """Precisions worth measuring here, and why the others are skipped."""
    skipped: dict[str, str] = {}
    if s.precisions:
        return list(s.precisions), skipped
    if gpu:
        return ["float32", "float16", "bfloat16"], skipped
    out = ["float32"]
    if {"avx512_bf16", "amx_bf16"} & cpu_flags():
        out.append("bfloat16")
    else:
        skipped["bfloat16"] = "this CPU has no bfloat16 instructions (avx512_bf16 / amx_bf16)"
    skipped["float16"] = "float16 is for GPUs; CPUs emulate it"
    return out, skipped


def _head_f1s(
    s: Settings, xt: np.ndarray, yt: np.ndarray, xv: np.ndarray, yv: np.ndarray, classes: Any
) -> list[float]:
    """Validation macro-F1 of the search's trials (one size) on the given features."""
    import keras

    from clothopt.objective import train_head, trial_seed

    f1s = []
    for b in s.search_batches:
        for lr in s.search_lrs:
            params = {"image_size": s.image_size, "batch_size": b, "learning_rate": lr}
            res = train_head(xt, yt, xv, yv, classes, lr, b, s.epochs, trial_seed(s.seed, params))
            f1s.append(float(res.val_metrics["f1_macro"]))
            keras.backend.clear_session()
    return f1s


def _precision_f1(s: Settings, precisions: list[str]) -> dict[str, Any]:
    """Trial F1 with each precision's features, on the search-cost subset (train + validation)."""
    from clothopt.data import open_dataset
    from clothopt.features import FeatureCache
    from clothopt.model.backbones import get_backbone

    data = link_subset(
        s.data, Path(s.work) / "search-data", _search_counts(s)
    )  # the same subset as the search-cost sections
    ds = open_dataset(data, splits=("train", "validation"))
    spec = get_backbone(s.backbone)
    out: dict[str, Any] = {}
    for p in precisions:
        cache = FeatureCache(None, _batch(s), _threads(s), precision=p)
        tr, va = (
            cache.get(spec, s.weights, s.seed, s.image_size, "nearest", ds[n])
            for n in ("train", "validation")
        )
        out[p] = {"f1": _head_f1s(s, tr.x, tr.y, va.x, va.y, ds.classes)}
        cache.release_model()
    return out


def measure_options(s: Settings) -> dict[str, Any]:
    """Each extraction option against the baseline: speed, and how much the features change."""
    from clothopt.data import load_batch

    gpu = gpu_name()
    base_threads = _threads(s)
    precisions, skipped = _precisions(s, gpu)
    batch0 = _batch(s)
    base = _Variant("baseline", "-", batch=batch0, threads=base_threads)
    variants = [base]
    variants += [
        _Variant("precision", p, precision=p, batch=batch0, threads=base_threads)
        for p in precisions
        if p != "float32"
    ]
    # the extraction batch size changes only the forward pass: _batch_by_size measures it at
    # every grid size, where its best value differs
    variants += [
        _Variant("decode_threads", t, batch=batch0, threads=t)
        for t in s.option_threads
        if t != base_threads
    ]
    batch_max = max(v.batch for v in variants)
    split = _images_split(s, max(s.option_images, batch_max), batch_max)
    images = load_batch(split.paths, s.image_size)
    models: dict[tuple[str, bool | None], keras.Model] = {}

    def model_for(v: _Variant) -> keras.Model:
        if (v.precision, v.jit) not in models:
            models[(v.precision, v.jit)] = _extractor(s, s.image_size, v.precision, v.jit)
        return models[(v.precision, v.jit)]

    auto_jit = bool(model_for(base).jit_compile)  # what Keras's "auto" chose here
    variants.append(
        _Variant(
            "jit_compile",
            not auto_jit,
            jit=not auto_jit,
            batch=batch0,
            threads=base_threads,
        )
    )
    n_images: dict[int, int] = {}
    base_per_image = 0.0
    for i, v in enumerate(variants):
        per_image = _warm(model_for(v), images, v.batch) / v.batch
        base_per_image = base_per_image or per_image
        n = len(images) - len(images) % v.batch
        if per_image > 3 * base_per_image:
            # far slower than the baseline (XLA on CPU): fewer images, so it stays bounded
            cap = int(s.slow_variant_seconds / per_image / 2 / max(s.option_rounds, 1))
            n = max(v.batch * 2, min(n, cap - cap % v.batch))
        n_images[i] = n
    speed: dict[int, dict[str, list[float]]] = {i: {"fwd": [], "pipe": []} for i in n_images}
    feats: dict[int, np.ndarray] = {}
    for _ in range(s.option_rounds):
        for i, v in enumerate(variants):
            n = n_images[i]
            sub = _head(split, n)  # the same first n images as images[:n]
            t_fwd, _x = _forward(model_for(v), images[:n], v.batch)
            t_pipe, x = _pipeline(model_for(v), sub, s.image_size, v.batch, v.threads)
            speed[i]["fwd"].append(n / t_fwd)
            speed[i]["pipe"].append(n / t_pipe)
            feats.setdefault(i, x)
    base_pipe = median(speed[0]["pipe"])
    f1: dict[str, Any] = {}
    if len(precisions) > 1:
        f1 = _precision_f1(s, precisions)
    rows = []
    for i, v in enumerate(variants):
        pipe, fwd = median(speed[i]["pipe"]), median(speed[i]["fwd"])
        row: dict[str, Any] = {
            "option": v.option,
            "value": v.value,
            "images": n_images[i],
            "pipeline_img_s": _r(pipe, 1),
            "forward_img_s": _r(fwd, 1),
            "speedup": _r(pipe / base_pipe),
            **{k: float(f"{x:.3g}") for k, x in _feature_diff(feats[i], feats[0]).items()},
        }
        if v.option == "precision":
            ref, got = f1["float32"], f1[v.value]
            diffs = [abs(a - b) for a, b in zip(ref["f1"], got["f1"], strict=True)]
            row["f1_float32"] = [_r(x, 4) for x in ref["f1"]]
            row["f1"] = [_r(x, 4) for x in got["f1"]]
            row["max_f1_diff"] = _r(max(diffs), 4)
            row["within_tolerance"] = max(diffs) <= F1_TOLERANCE
            row["tolerance"] = f"max |dF1| <= {F1_TOLERANCE} over {len(diffs)} trials"
        elif v.option != "baseline":
            row["within_tolerance"] = row["max_rel_diff"] <= FEATURE_TOLERANCE
            row["tolerance"] = f"max |dx| / max |x| <= {FEATURE_TOLERANCE:g}"
        per_round = [a / b for a, b in zip(speed[i]["pipe"], speed[0]["pipe"], strict=True)]
        row["speedup_per_round"] = [_r(x) for x in per_round]
        # a win: faster by the margin overall and not slower in any round (load is noisy)
        row["wins"] = (
            v.option != "baseline" and pipe >= MIN_SPEEDUP * base_pipe and min(per_round) >= 1.0
        )
        row["recommended"] = bool(row["wins"] and row.get("within_tolerance", False))
        rows.append(row)
    models.clear()  # free the extractors before the next measurement builds its own
    by_size = _batch_by_size(s, batch0)
    return {
        "backbone": s.backbone,
        "image_size": s.image_size,
        "baseline": {
            "precision": "float32",
            "jit_compile": auto_jit,
            "batch_size": batch0,
            "decode_threads": base_threads,
        },
        "rounds": s.option_rounds,
        "device": gpu or "cpu",
        "min_speedup": MIN_SPEEDUP,
        "variants": rows,
        "batch_by_size": by_size,
        "skipped": skipped,
    }


def _batch_by_size(s: Settings, batch0: int) -> dict[str, Any]:
    """Forward-pass rate of each extraction batch size at each of the grid's image sizes.

    The batch size changes only the forward pass (decoding is per image), and its best value
    may depend on the image size; the grid's extraction time weighs every size.
    """
    import keras

    from clothopt.data import load_batch

    batches = sorted({batch0, *s.option_batches})
    n = max(batches) * max(1, s.batch_images // max(batches))
    split = _images_split(s, n, max(batches))
    rows = []
    for size in s.batch_sizes_px:
        images = load_batch(split.paths, size)
        model = _extractor(s, size)
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


# --------------------------------------------------------------------------- search cost


def _search_counts(s: Settings) -> dict[str, int]:
    return {"train": s.train_images, "validation": s.val_images, "test": 20}


def _space_file(s: Settings, sizes: Sequence[int], name: str) -> Path:
    path = Path(s.work) / f"{name}.toml"
    lines = [
        f'description = "benchmark grid: {name}"',
        'sampler = "grid"',
        f"epochs = {s.epochs}",
        "",
        "[params]",
        f"image_size = {list(sizes)}",
        f"batch_size = {list(s.search_batches)}",
        f"learning_rate = [{', '.join(repr(float(x)) for x in s.search_lrs)}]",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_study(
    s: Settings,
    name: str,
    data: Path,
    space: str,
    use_cache: bool,
    objective: Callable[..., Any] | None = None,
) -> tuple[optuna.Study, Any, float, dict[str, Any]]:
    """Create a study on SQLite and run it with ``study.optimize`` as ``clothopt study run`` does.

    Returns the study, its summary, the seconds of ``optimize`` alone and the extraction
    settings it ran with.
    """
    import keras

    from clothopt import study as studies
    from clothopt.data import open_dataset
    from clothopt.features import FeatureCache
    from clothopt.objective import Objective

    work = Path(s.work)
    storage = f"sqlite:///{work / 'studies' / (name + '.db')}"
    st, config = studies.create(
        backbone=s.backbone,
        space=space,
        name=name,
        storage=storage,
        data=str(data),
        weights=s.weights,
        seed=s.seed,
        use_cache=use_cache,
        cache_dir=str(work / "features" / name),
    )
    dataset = open_dataset(config.data)
    cache = FeatureCache(
        config.cache_dir, batch_size=config.extract_batch_size, threads=config.threads
    )
    obj = objective(config) if objective is not None else Objective(config, dataset, cache)
    keras.backend.clear_session()
    gc.collect()
    summary = studies.optimize(st, config, obj, progress=False)
    used = {"extract_batch": cache.batch_size, "decode_threads": cache.threads}
    return st, summary, summary.seconds, used


def _trial_rows(st: optuna.Study) -> list[dict[str, Any]]:
    """``study.trial_rows`` by trial number, with each trial's seconds and resident MiB."""
    trials = {t.number: t for t in st.get_trials(deepcopy=False)}
    rows = sorted(trial_rows(st), key=lambda r: r["number"])
    for r in rows:
        t = trials[r["number"]]
        r["seconds"] = _r(t.duration.total_seconds()) if t.duration else None
        r["rss_mb"] = t.user_attrs.get("rss_mb")
    return rows


def measure_search(s: Settings, path: str) -> dict[str, Any]:
    """The grid of one image size (batch x learning rate) by one path, through study.optimize."""
    assert path in ("end_to_end", "cached"), path
    from clothopt.data import open_dataset

    data = link_subset(s.data, Path(s.work) / "search-data", _search_counts(s))
    ds = open_dataset(data)
    _warm_page_cache([p for n in ("train", "validation") for p in ds[n].paths])
    space = str(_space_file(s, [s.image_size], f"grid-{s.image_size}px"))
    st, summary, seconds, used = _run_study(
        s, f"search-{path}", data, space, use_cache=path == "cached"
    )
    rows = _trial_rows(st)
    return {
        "path": path,
        "image_size": s.image_size,
        "train_images": len(ds["train"]),
        "val_images": len(ds["validation"]),
        "epochs": s.epochs,
        "trials": len(rows),
        "complete": summary.complete,
        "seconds": _r(seconds),
        **used,
        "trial_rows": rows,
    }


# --------------------------------------------------------------------------- overhead


def measure_overhead(s: Settings) -> dict[str, Any]:
    """Storage and sampling per trial: the paper grid with an objective that trains nothing."""
    from clothopt.data import open_dataset

    data = link_subset(
        s.data, Path(s.work) / "tiny-data", {"train": 40, "validation": 20, "test": 20}
    )
    open_dataset(data)

    def trivial(config: Any) -> Callable[[optuna.Trial], float]:
        def objective(trial: optuna.Trial) -> float:
            config.space.suggest(trial)  # the sampling a real trial does
            return 0.5

        return objective

    st, summary, seconds, _ = _run_study(
        s, "overhead", data, "paper", use_cache=True, objective=trivial
    )
    n = max(summary.ran, 1)
    rows = _trial_rows(st)
    per_trial = [r["seconds"] for r in rows if r["state"] == "COMPLETE"]
    return {
        "storage": "sqlite",
        "trials": summary.ran,
        "seconds": _r(seconds),
        "ms_per_trial": _r(1000 * seconds / n, 1),
        "ms_per_trial_inside": _r(1000 * median(per_trial), 1),
    }


# --------------------------------------------------------------------------- memory


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
        pts = pts[1:]
        if len(pts) < 2:
            continue
        x = np.array([p[0] for p in pts], float)
        y = np.array([p[1] for p in pts], float)
        num += float(((x - x.mean()) * (y - y.mean())).sum())
        den += float(((x - x.mean()) ** 2).sum())
    return num / den if den else 0.0


def measure_memory(s: Settings) -> dict[str, Any]:
    """Resident memory over a whole grid on the cached path (run in a fresh process)."""
    from clothopt.data import open_dataset

    counts = {"train": s.memory_train_images, "validation": s.memory_val_images, "test": 20}
    data = link_subset(s.data, Path(s.work) / "memory-data", counts)
    ds = open_dataset(data)
    rss_before = rss_mb()
    space = s.memory_space
    st, summary, seconds, _ = _run_study(s, "memory", data, space, use_cache=True)
    rows = _trial_rows(st)
    rss = [r["rss_mb"] for r in rows if r["rss_mb"] is not None]
    slope_all = float(np.polyfit(np.arange(len(rss)), rss, 1)[0]) if len(rss) > 1 else 0.0
    slope = _within_block_slope(rows)
    return {
        "space": space,
        "trials": summary.ran,
        "complete": summary.complete,
        "train_images": len(ds["train"]),
        "val_images": len(ds["validation"]),
        "seconds": _r(seconds),
        "rss_before_mb": _r(rss_before, 1),
        "rss_mb": [_r(x, 1) for x in rss],
        "rss_first_mb": _r(rss[0], 1) if rss else None,
        "rss_last_mb": _r(rss[-1], 1) if rss else None,
        "rss_max_mb": _r(max(rss), 1) if rss else None,
        "peak_rss_mb": _r(_peakrss_mb(), 1),
        "slope_mb_per_trial": _r(slope, 2),
        "slope_all_mb_per_trial": _r(slope_all, 2),
        "flat": abs(slope) <= 1.0,
        "flat_rule": "within-size slope of resident MiB per trial <= 1.0",
    }


# --------------------------------------------------------------------------- dispatch


def run_section(name: str, s: Settings) -> dict[str, Any]:
    start = time.perf_counter()
    if name == "extraction":
        out = measure_extraction(s)
    elif name == "options":
        out = measure_options(s)
    elif name == "head":
        out = measure_head(s)
    elif name == "search_e2e":
        out = measure_search(s, "end_to_end")
    elif name == "search_cached":
        out = measure_search(s, "cached")
    elif name == "overhead":
        out = measure_overhead(s)
    elif name == "memory":
        out = measure_memory(s)
    else:
        raise ValueError(f"unknown section {name!r} (choose from {', '.join(SECTIONS)})")
    out["section_seconds"] = _r(time.perf_counter() - start, 1)
    out["keras_backend"] = keras_backend()
    return out
