"""``clothopt study finalize``: the paper's final training, a test report and an exported model.

The best trial's configuration (or one named) is trained again for 5 epochs on the train
split's cached features, then exported as one Keras model that takes raw images (built
by :func:`clothopt.model.compose.compose`, as every model is). The test split, which no trial
saw, is scored by that model as saved, reloaded from its file: the figures in ``report.json``
are the file's own. Beside the paper's figures (precision, recall, F1, parameters, seconds) the
report holds what the paper lacked: a 95% bootstrap interval of the test macro-F1.

Everything is written into a temporary folder beside ``<study folder>/final`` and renamed into
place, so a crash leaves the previous result or none, never a mix of two.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt._table import format_table
from clothopt.errors import UserError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_RESAMPLES",
    "FINAL_ATTR",
    "MIN_RESAMPLES",
    "MODEL_FILE",
    "REPORT_FILE",
    "default_paper_dir",
    "final_dir",
    "finalize",
    "format_report",
    "load_final",
    "paper_table",
    "pick_trial",
]

FINAL_ATTR = "clothopt:final"  # study user attr: {"dir", "trial", "test_f1_macro", ...}
MODEL_FILE = "model.keras"
REPORT_FILE = "report.json"
FIGURE_STEM = "confusion_matrix"
DEFAULT_EPOCHS = 5  # the paper's final training
DEFAULT_RESAMPLES = 2000
MIN_RESAMPLES = 1000
_TMP_PREFIX = ".final-tmp-"
_OLD_PREFIX = ".final-old-"


def final_dir(storage: str | None, name: str) -> Path:
    from clothopt.paths import study_dir

    return study_dir(storage, name) / "final"


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"finalize: {message}", file=sys.stderr, flush=True)


def pick_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """Trial ``number``, or the best COMPLETE one (the lowest number among equal values)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if number is None:
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if not done:
            raise UserError(
                f"study {study.study_name!r} has no complete trial to finalize "
                f"(run `clothopt study optimize {study.study_name}` first)"
            )
        return max(done, key=lambda t: (t.value, -t.number))
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        raise UserError(
            f"study {study.study_name!r} has no trial {number} (trials 0..{len(trials) - 1})"
        )
    if found.state != TrialState.COMPLETE:
        raise UserError(
            f"trial {number} of study {study.study_name!r} is {found.state.name}, not COMPLETE"
        )
    return found


def _search_seconds(study: optuna.Study) -> tuple[float, float, int]:
    """Sum over trials of their own extract + train seconds; first start to last end; count."""
    trials = [t for t in study.get_trials(deepcopy=False) if "train_seconds" in t.user_attrs]
    total = sum(
        float(t.user_attrs.get("extract_seconds", 0.0)) + float(t.user_attrs["train_seconds"])
        for t in trials
    )
    ends = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    wall = 0.0
    if ends:
        first = min(t.datetime_start for t in ends)  # type: ignore[type-var]
        last = max(t.datetime_complete for t in ends)  # type: ignore[type-var]
        wall = (last - first).total_seconds()  # type: ignore[operator]
    return round(total, 3), round(wall, 3), len(trials)


# --------------------------------------------------------------------------- atomic folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(folder: Path, prefix: str) -> int | None:
    with contextlib.suppress(ValueError, IndexError):
        return int(folder.name[len(prefix) :].split("-")[0])
    return None


def _recover(dest: Path) -> None:
    """Tidy what a killed finalize left: its temporary folder, or the previous result moved
    aside just before the swap (it comes back when nothing replaced it)."""
    parent = dest.parent
    if not parent.is_dir():
        return
    for prefix in (_OLD_PREFIX, _TMP_PREFIX):
        # newest first: the latest result moved aside is the one to bring back
        found = sorted(parent.glob(prefix + "*"), key=lambda p: p.stat().st_mtime, reverse=True)
        for folder in found:
            pid = _owner_pid(folder, prefix)
            if pid is None or pid == os.getpid() or _alive(pid):
                continue  # another finalize is running now: its folders are its own
            if prefix == _OLD_PREFIX and not dest.exists():
                os.replace(folder, dest)
            else:
                shutil.rmtree(folder, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(tmp: Path, dest: Path) -> None:
    # Two renames: a crash between them leaves the old result aside, restored by _recover
    old = None
    if dest.exists():
        old = dest.with_name(f"{_OLD_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- figures


def _confusion_figure(
    cm: list[list[int]], classes: list[str], title: str, folder: Path
) -> list[str]:
    """``confusion_matrix.html`` (plotly.js inside: opens offline), and a PNG with kaleido."""
    import plotly.graph_objects as go

    counts = np.asarray(cm)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    fig = go.Figure(
        go.Heatmap(
            z=share,
            x=classes,
            y=classes,
            text=counts,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar={"title": {"text": "share of row"}},
            hovertemplate="true %{y}<br>predicted %{x}<br>%{text} images<extra></extra>",
        )
    )
    side = 160 + 48 * len(classes)
    fig.update_layout(
        title={"text": title},
        xaxis={"title": {"text": "predicted"}, "side": "bottom"},
        yaxis={"title": {"text": "true"}, "autorange": "reversed"},
        width=side + 140,
        height=side + 60,
    )
    written = [f"{FIGURE_STEM}.html"]
    fig.write_html(folder / written[0], include_plotlyjs=True, full_html=True)
    if importlib.util.find_spec("kaleido") is not None:
        try:
            fig.write_image(folder / f"{FIGURE_STEM}.png", scale=2)
            written.append(f"{FIGURE_STEM}.png")
        except Exception as exc:  # kaleido needs a browser it may not find: the HTML is enough
            print(f"finalize: no PNG figure ({exc})", file=sys.stderr)
    return written


# --------------------------------------------------------------------------- finalize


def finalize(
    name: str,
    storage: str | None = None,
    *,
    epochs: int = DEFAULT_EPOCHS,
    trial: int | None = None,
    data: str | None = None,
    cache_dir: str | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    bootstrap_seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Retrain, export, score the test split with the saved model; returns ``report.json``."""
    from clothopt import study as study_mod
    from clothopt.data import SPLITS, open_dataset
    from clothopt.features import FeatureCache
    from clothopt.metrics import bootstrap_ci, classification_metrics
    from clothopt.model.backbones import get_backbone
    from clothopt.model.compose import Head, compose
    from clothopt.objective import train_head, trial_seed
    from clothopt.predict import CLASSES_FILE, iter_images, load_classifier, predict_image

    if not 1 <= epochs <= 1000:
        raise UserError(f"--epochs must be between 1 and 1000, not {epochs}")
    if resamples < MIN_RESAMPLES:
        raise UserError(f"--resamples must be at least {MIN_RESAMPLES}, not {resamples}")
    st, config = study_mod.load(name, storage)
    chosen = pick_trial(st, trial)
    try:
        params = {k: chosen.params[k] for k in ("image_size", "batch_size", "learning_rate")}
    except KeyError as exc:
        raise UserError(f"trial {chosen.number} has no {exc.args[0]} parameter") from None
    if config.resize != "nearest":
        raise UserError(
            f"study {name!r} resizes with {config.resize}: the exported model reproduces only "
            "PIL's nearest resize (the paper's)"
        )
    spec = get_backbone(config.backbone)
    dataset = open_dataset(data or config.data)
    if dataset.fingerprint != config.data_fingerprint:
        raise UserError(
            f"data set {dataset.root} differs from the one study {name!r} was created with "
            f"(fingerprint {dataset.fingerprint[:12]} != {config.data_fingerprint[:12]})"
        )
    classes = list(dataset.classes)
    size, batch, lr = params["image_size"], params["batch_size"], params["learning_rate"]

    # 1. features of every split at the trial's size (the search cached train and validation)
    cache = FeatureCache(
        cache_dir or config.cache_dir,
        batch_size=config.extract_batch_size,
        threads=config.threads,
        progress=progress,
    )
    feats = {
        s: cache.get(spec, config.weights, config.seed, size, config.resize, dataset[s])
        for s in SPLITS
    }
    cache.release_model()
    extract_seconds = sum(f.extract_seconds for f in feats.values() if not f.cached)

    # 2. the paper's final training: train split only, validation scored after each epoch
    seed = trial_seed(config.seed, params)
    _say(progress, f"training trial {chosen.number}'s head for {epochs} epochs ({params})")
    tr, va = feats["train"], feats["validation"]
    head = train_head(tr.x, tr.y, va.x, va.y, classes, lr, batch, epochs, seed)

    dest = final_dir(storage, name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _recover(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=dest.parent))
    try:
        # 3. export, then score the test split with the model as saved (reloaded from its file)
        start = time.perf_counter()
        trained = Head(num_classes=len(classes), weights=head.head_weights)
        exported = compose(
            spec, size, config.weights, config.seed, raw_input=True, head=trained, softmax=True
        )
        exported.save(tmp / MODEL_FILE)
        (tmp / CLASSES_FILE).write_text(json.dumps(classes, indent=2) + "\n")
        export_seconds = time.perf_counter() - start
        model, _ = load_classifier(tmp / MODEL_FILE)  # as `clothopt predict` loads it
        test = dataset["test"]
        _say(progress, f"scoring the saved model on the {len(test)} test images")
        start = time.perf_counter()
        preds = []
        for _path, image in iter_images(list(test.paths), config.threads):
            if isinstance(image, UserError):
                raise image
            preds.append(int(np.argmax(predict_image(model, image))))
        test_seconds = time.perf_counter() - start
        y_test, y_pred = test.labels, np.asarray(preds, dtype=np.int64)
        metrics = classification_metrics(y_test, y_pred, classes)
        low, high = bootstrap_ci(
            y_test, y_pred, len(classes), resamples=resamples, seed=bootstrap_seed
        )
        kernel, bias = head.head_weights
        cached_pred = np.argmax(feats["test"].x @ kernel + bias, axis=1)
        cached = classification_metrics(y_test, cached_pred, classes)
        if (disagree := int(np.sum(cached_pred != y_pred))) > 0:
            # float noise can flip a near tie; more than that means the export differs
            print(
                f"finalize: warning: the saved model and the cached-feature head disagree on "
                f"{disagree} of {len(y_pred)} test images",
                file=sys.stderr,
            )
        head_params = int(kernel.size + bias.size)
        search, search_wall, search_trials = _search_seconds(st)

        report: dict[str, Any] = {
            "study": name,
            "backbone": spec.name,
            "weights": config.weights,
            "trial": chosen.number,
            "trial_validation_f1_macro": chosen.value,
            "params": params,
            "epochs": epochs,
            "seed": seed,
            "classes": classes,
            "test": metrics,
            "test_images": len(test),
            "f1_macro_ci95": [low, high],
            "bootstrap": {
                "resamples": resamples,
                "seed": bootstrap_seed,
                "method": "percentile",
                "confidence": 0.95,
            },
            "test_labels": y_test.tolist(),
            "test_predictions": y_pred.tolist(),
            "cached_path_agreement": {
                "agree": int(np.sum(cached_pred == y_pred)),
                "of": len(y_pred),
                "cached_f1_macro": cached["f1_macro"],
            },
            "final_validation_f1_per_epoch": head.epoch_f1,
            "final_loss_per_epoch": head.epoch_loss,
            "total_params": int(tr.base_params) + head_params,
            "trainable_params": head_params,
            "exported_model_params": int(model.count_params()),
            "search_seconds": search,
            "search_wall_seconds": search_wall,
            "search_trials": search_trials,
            "final_train_seconds": round(head.train_seconds, 3),
            "final_extract_seconds": round(extract_seconds, 3),
            "export_seconds": round(export_seconds, 3),
            "test_seconds": round(test_seconds, 3),
            "model": MODEL_FILE,
            "classes_file": CLASSES_FILE,
            "model_input": (
                f"raw RGB images (B, H, W, 3), 0..255, any H and W (one size per batch); "
                f"resized inside to {size}x{size} as PIL NEAREST, then {spec.name}'s "
                "preprocess_input"
            ),
            "data": str(dataset.root.absolute()),
            "data_fingerprint": dataset.fingerprint,
            "versions": study_mod._versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        title = (
            f"{name}: test confusion matrix, macro-F1 {metrics['f1_macro']:.4f} "
            f"(95% CI {low:.4f}-{high:.4f})"
        )
        report["figures"] = _confusion_figure(metrics["confusion_matrix"], classes, title, tmp)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        for path in tmp.iterdir():
            path.chmod(0o644)  # mkdtemp makes a private folder; others read these files
        tmp.chmod(0o755)
        _fsync_tree(tmp)
        _swap_in(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once swapped in
    st.set_user_attr(
        FINAL_ATTR,
        {
            "dir": str(dest),
            "trial": chosen.number,
            "test_f1_macro": metrics["f1_macro"],
            "f1_macro_ci95": [low, high],
            "model": MODEL_FILE,
            "created": report["created"],
        },
    )
    _attach_to_dashboard(st, chosen.number, storage, dest, report["figures"])
    return report


def _attach_to_dashboard(
    st: optuna.Study, number: int, storage: str | None, folder: Path, figures: list[str]
) -> None:
    """Show the report, figure and model under the trial in optuna-dashboard (best effort)."""
    from clothopt.dashboard import attach_files
    from clothopt.predict import CLASSES_FILE

    files = [
        folder / REPORT_FILE,
        *(folder / f for f in figures),
        folder / MODEL_FILE,
        folder / CLASSES_FILE,
    ]
    try:
        attach_files(st, number, storage, files)
    except (UserError, OSError) as exc:
        print(f"finalize: not attached to the dashboard: {exc}", file=sys.stderr)


# --------------------------------------------------------------------------- reading, printing


def load_final(name: str, storage: str | None = None) -> tuple[dict[str, Any], Path]:
    """A finalized study's ``report.json`` and its folder."""
    from clothopt import study as study_mod

    st, _ = study_mod.load(name, storage)
    attr = st.user_attrs.get(FINAL_ATTR)
    if not attr:
        raise UserError(f"study {name!r} is not finalized (run `clothopt study finalize`)")
    folder = Path(attr["dir"])
    try:
        return json.loads((folder / REPORT_FILE).read_text()), folder
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot read {folder / REPORT_FILE} ({exc}); run `clothopt study finalize` again"
        ) from None


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def format_report(report: dict[str, Any], folder: Path | None = None) -> str:
    """The test report as plain text for the terminal."""
    t = report["test"]
    p = report["params"]
    lines = [
        f"study {report['study']} ({report['backbone']}): trial {report['trial']} "
        f"(image {p['image_size']} px, batch {p['batch_size']}, learning rate "
        f"{p['learning_rate']:g}) retrained for {report['epochs']} epochs on the train split",
        f"test split: {report['test_images']} images no trial saw, scored by the saved model",
        "",
    ]
    rows: list[dict[str, Any]] = [
        {"class": c, **{k: v[k] for k in ("precision", "recall", "f1", "support")}}
        for c, v in t["per_class"].items()
    ]
    rows.append(
        {
            "class": "macro",
            "precision": t["precision_macro"],
            "recall": t["recall_macro"],
            "f1": t["f1_macro"],
            "support": report["test_images"],
        }
    )
    lines += [format_table(rows), ""]
    low, high = report["f1_macro_ci95"]
    b = report["bootstrap"]
    lines += [
        f"accuracy {t['accuracy']:.4f}",
        f"macro-F1 {t['f1_macro']:.4f}, 95% bootstrap CI [{low:.4f}, {high:.4f}] "
        f"({b['resamples']} resamples, seed {b['seed']}, {b['method']})",
        "",
        "confusion matrix (rows: true class, columns: predicted)",
    ]
    classes = report["classes"]
    cm_rows = [
        {"true": c, **{classes[j]: n for j, n in enumerate(row)}}
        for c, row in zip(classes, t["confusion_matrix"], strict=True)
    ]
    lines += [format_table(cm_rows), ""]
    agree = report["cached_path_agreement"]
    lines += [
        f"parameters: {report['total_params']:,} total, {report['trainable_params']:,} trainable",
        f"seconds: search {report['search_seconds']:.1f} (sum over {report['search_trials']} "
        f"trials; {report['search_wall_seconds']:.1f} wall), final training "
        f"{report['final_train_seconds']:.1f}",
        f"saved model agrees with the cached-feature head on {agree['agree']}/{agree['of']} "
        "test images",
    ]
    if folder is not None:
        files = [report["model"], report.get("classes_file", "classes.json"), REPORT_FILE]
        lines.append(f"wrote {', '.join(files + report.get('figures', []))} to {folder}")
    return "\n".join(lines)


def default_paper_dir() -> Path | None:
    """``../shared/paper`` (beside the checkout) when it holds the paper's tables."""
    found = Path("../shared/paper")
    return found if (found / "final_test.csv").is_file() else None


# the paper's Table III rows, and the figure of ours that each is beside
_PAPER_ROWS = (
    ("precision_macro_pct", "test macro precision %", lambda r: _pct(r["test"]["precision_macro"])),
    ("recall_macro_pct", "test macro recall %", lambda r: _pct(r["test"]["recall_macro"])),
    (
        "f1_macro_pct",
        "test macro F1 %",
        lambda r: (
            f"{_pct(r['test']['f1_macro'])} "
            f"[{_pct(r['f1_macro_ci95'][0])}, {_pct(r['f1_macro_ci95'][1])}]"
        ),
    ),
    ("total_parameters", "total parameters", lambda r: f"{r['total_params']:,}"),
    ("final_training_seconds", "final training s", lambda r: f"{r['final_train_seconds']:.1f}"),
    ("search_seconds", "search s", lambda r: f"{r['search_seconds']:.1f}"),
)


def paper_table(report: dict[str, Any], paper: Path | None) -> str:
    """Ours beside the paper's Table III (its four backbones), or ours alone without it."""
    ours = f"ours: {report['backbone']}"
    paper_cols: dict[str, dict[str, str]] = {}
    if paper is not None:
        path = Path(paper) / "final_test.csv"
        try:
            with path.open(newline="") as fh:
                for row in csv.DictReader(fh):
                    metric = row.pop("metric")
                    for backbone, value in row.items():
                        paper_cols.setdefault(f"paper: {backbone}", {})[metric] = value
        except (OSError, KeyError, csv.Error) as exc:
            raise UserError(f"cannot read the paper's table {path}: {exc}") from None
    rows = []
    for key, label, ours_of in _PAPER_ROWS:
        row = {"metric": label, ours: ours_of(report)}
        for col, values in paper_cols.items():
            value = values.get(key, "")
            if key == "total_parameters" and value:
                value = f"{int(float(value)):,}"
            row[col] = value
        rows.append(row)
    note = (
        "\nours: 95% bootstrap CI in brackets; seconds on this machine's CPU with cached "
        "features (the paper's: a GPU, the base run every epoch)"
    )
    return format_table(rows) + (note if paper_cols else "")
