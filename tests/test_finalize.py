"""``study finalize``: bootstrap interval, exact in-model resize, report, atomic folder, CLI.

The exported model is checked pixel for pixel against PIL and, in a fresh Python process that
imports only Keras, NumPy and PIL, against the macro-F1 that report.json states.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score, precision_recall_fscore_support

from clothopt import engine, paths
from clothopt import study as study_mod
from clothopt.data import open_dataset
from clothopt.errors import InvalidArgument, NotFound, UserError
from clothopt.features import FeatureCache
from clothopt.final import blend as blend_mod
from clothopt.final import finalize as finalize_mod
from clothopt.final import store
from clothopt.final.finalize import finalize
from clothopt.final.store import FINAL_ATTR, load_final
from clothopt.metrics import bootstrap_ci, classification_metrics
from clothopt.model.backbones import get_backbone
from clothopt.objective import Objective
from clothopt.reports.paper import paper_table
from conftest import make_dataset, make_tiny_study, run_cli

SPACE = """
sampler = "grid"
epochs = 1
[params]
image_size = [32]
batch_size = [4, 8]
learning_rate = [0.01]
"""
CONTRACT = {
    "study",
    "backbone",
    "weights",
    "trial",
    "params",
    "epochs",
    "classes",
    "test",
    "f1_macro_ci95",
    "bootstrap",
    "test_labels",
    "test_predictions",
    "total_params",
    "trainable_params",
    "search_seconds",
    "search_wall_seconds",
    "final_train_seconds",
    "model",
    "versions",
    "created",
    "cached_path_agreement",
}


# --------------------------------------------------------------------------- bootstrap


def _direct_bootstrap(y: np.ndarray, p: np.ndarray, c: int, n: int, seed: int) -> np.ndarray:
    """The same resamples, each scored by scikit-learn itself."""
    idx = np.random.default_rng(seed).integers(0, len(y), (n, len(y)))
    return np.array(
        [f1_score(y[i], p[i], labels=np.arange(c), average="macro", zero_division=0) for i in idx]
    )


def test_bootstrap_ci_equals_a_direct_loop_over_the_same_resamples() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 40)
    p = np.where(rng.random(40) < 0.7, y, rng.integers(0, 3, 40))  # class 3 never predicted
    low, high = bootstrap_ci(y, p, 4, resamples=1000, seed=11)
    want = np.percentile(_direct_bootstrap(y, p, 4, 1000, 11), [2.5, 97.5])
    assert (low, high) == pytest.approx(tuple(want), abs=1e-12)
    f1 = f1_score(y, p, labels=np.arange(4), average="macro", zero_division=0)
    assert low < f1 < high
    # another seed draws other resamples; the same seed, the same interval
    assert bootstrap_ci(y, p, 4, resamples=1000, seed=12) != (low, high)
    assert bootstrap_ci(y, p, 4, resamples=1000, seed=11) == (low, high)


def test_bootstrap_ci_agrees_with_scipy() -> None:
    from scipy.stats import bootstrap

    rng = np.random.default_rng(5)
    y = rng.integers(0, 5, 300)
    p = np.where(rng.random(300) < 0.8, y, rng.integers(0, 5, 300))

    def macro_f1(a: np.ndarray, b: np.ndarray) -> float:
        return f1_score(a, b, labels=np.arange(5), average="macro", zero_division=0)

    res = bootstrap(
        (y, p),
        macro_f1,
        paired=True,
        vectorized=False,
        n_resamples=1000,
        method="percentile",
        rng=np.random.default_rng(0),
    )
    low, high = bootstrap_ci(y, p, 5, resamples=1000, seed=0)
    ci = res.confidence_interval
    assert low == pytest.approx(ci.low, abs=0.015)
    assert high == pytest.approx(ci.high, abs=0.015)
    assert 0.03 < high - low < 0.2


def test_bootstrap_ci_of_perfect_predictions_is_one_point_and_bad_input_is_refused() -> None:
    y = np.arange(300) % 3
    assert bootstrap_ci(y, y, 3, resamples=1000) == (1.0, 1.0)
    # labels stay fixed: a resample that misses a class scores it 0, as scikit-learn does
    few = np.array([0, 1, 2, 0, 1, 2])
    assert bootstrap_ci(few, few, 3, resamples=1000)[0] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        bootstrap_ci(y, y[:3], 3)
    with pytest.raises(ValueError):
        bootstrap_ci(y, y, 3, resamples=0)


# --------------------------------------------------------------------------- resize in-model


def _resize_model(tmp_path: Path, size: int) -> Any:
    """Only the export's resize block, saved and loaded back in safe mode."""
    import keras

    from clothopt.model.compose import pil_nearest_resize

    inputs = keras.Input((None, None, 3), dtype="float32")
    model = keras.Model(inputs, pil_nearest_resize(inputs, size))
    model.save(tmp_path / f"resize{size}.keras")
    return keras.saving.load_model(tmp_path / f"resize{size}.keras", safe_mode=True)


@pytest.mark.parametrize("size", [7, 32, 300])
def test_in_model_resize_equals_pil_nearest_pixel_for_pixel(tmp_path: Path, size: int) -> None:
    # The first call traces with a static shape, later ones with unknown H and W: both graphs
    # must give PIL's pixels (a constant output size once let TensorFlow turn x / 300 into
    # x * (1/300), which rounds differently). H != W catches a mixed-up axis.
    model = _resize_model(tmp_path, size)
    rng = np.random.default_rng(size)
    shapes = [(20, 33), (533, 400), (400, 533), (1, 1), (size, size), (711, 400), (3, 701)]
    shapes += [tuple(int(v) for v in rng.integers(1, 800, 2)) for _ in range(12)]
    for h, w in shapes:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(pixels).resize((size, size), Image.NEAREST))
        got = np.asarray(model.predict_on_batch(pixels[None]))[0]
        np.testing.assert_array_equal(got, want, err_msg=f"{h}x{w} -> {size}")
    # a batch of one size, through predict() as a Keras user would call it
    batch = rng.integers(0, 256, (2, 45, 61, 3), dtype=np.uint8)
    got = model.predict(batch, verbose=0)
    for i in range(2):
        want = np.asarray(Image.fromarray(batch[i]).resize((size, size), Image.NEAREST))
        np.testing.assert_array_equal(got[i], want)


def test_in_model_running_sum_adds_in_order_like_pil() -> None:
    """The in-model index (exact int32 less the correction table) equals numpy's sequential
    float64 sum, PIL's, where a closed form alone does not."""
    import keras

    from clothopt.data import nearest_indices
    from clothopt.model.compose import pil_nearest_resize

    closed_form_differs = 0
    for size in (300, 400, 500):
        inputs = keras.Input((None, None, 3))
        # index tables, read off an image whose pixel values are their own row numbers
        model = keras.Model(inputs, pil_nearest_resize(inputs, size))
        for n in range(size // 3, 3 * size, 37):
            rows = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 2, 3))
            got = np.asarray(model.predict_on_batch(rows[None]))[0, :, 0, 0].astype(np.int64)
            np.testing.assert_array_equal(got, nearest_indices(n, size), err_msg=f"{n}->{size}")
            closed = np.floor((np.arange(size) + 0.5) * n / size).astype(np.int64)
            closed_form_differs += not np.array_equal(closed, got)
    assert closed_form_differs > 0  # the sizes tried include ones where order matters


# --------------------------------------------------------------------------- a finalized study


def _make_study(root: Path, weights: str, counts: tuple[int, int, int] = (8, 4, 6)) -> str:
    return make_tiny_study(root, weights, SPACE, counts)


_run = run_cli


@pytest.fixture(scope="module")
def finalized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A two-trial study on tiny data, finalized once through the CLI (random weights: fast)."""
    root = tmp_path_factory.mktemp("final")
    storage = _make_study(root, "none")
    code, out, err = _run(["study", "finalize", "tiny", "--storage", storage, "--quiet"])
    assert code == 0, err
    report, folder = load_final("tiny", storage)
    return {"root": root, "storage": storage, "report": report, "folder": folder, "out": out}


def test_report_holds_every_figure_of_the_contract(finalized: dict[str, Any]) -> None:
    report, storage = finalized["report"], finalized["storage"]
    assert set(report) >= CONTRACT
    st, cfg = study_mod.load("tiny", storage)
    best = max(st.trials, key=lambda t: (t.value, -t.number))
    assert report["trial"] == best.number and report["params"] == best.params
    assert report["epochs"] == 5 and report["classes"] == list(cfg.classes)
    test = open_dataset(cfg.data)["test"]
    assert report["test_labels"] == test.labels.tolist()
    y, p = np.array(report["test_labels"]), np.array(report["test_predictions"])
    assert report["test"] == classification_metrics(y, p, cfg.classes)
    prec, _, f1, _ = precision_recall_fscore_support(
        y, p, labels=[0, 1, 2], average="macro", zero_division=0
    )
    assert report["test"]["f1_macro"] == pytest.approx(f1)
    assert report["test"]["precision_macro"] == pytest.approx(prec)
    assert report["f1_macro_ci95"] == list(bootstrap_ci(y, p, 3, resamples=2000, seed=0))
    assert report["bootstrap"]["resamples"] >= 1000 and report["bootstrap"]["seed"] == 0
    head = 256 * 3 + 3  # Dense(3) on MobileNet 0.25's 256 pooled features
    assert report["trainable_params"] == head
    assert report["total_params"] == 218_544 + head  # the paper's way: base + head
    search = sum(t.user_attrs["extract_seconds"] + t.user_attrs["train_seconds"] for t in st.trials)
    assert report["search_seconds"] == pytest.approx(search, abs=1e-3)
    assert report["search_wall_seconds"] >= max(t.user_attrs["train_seconds"] for t in st.trials)
    assert report["final_train_seconds"] > 0
    agree = report["cached_path_agreement"]
    assert agree["agree"] == agree["of"] == len(test)
    attr = st.user_attrs[FINAL_ATTR]
    assert Path(attr["dir"]) == paths.study_dir(storage, "tiny") / "final"
    assert attr["trial"] == report["trial"] and attr["test_f1_macro"] == report["test"]["f1_macro"]


def test_finalize_writes_model_classes_and_an_offline_figure(finalized: dict[str, Any]) -> None:
    folder, report = finalized["folder"], finalized["report"]
    assert json.loads((folder / "classes.json").read_text()) == report["classes"]
    html = (folder / "confusion_matrix.html").read_text()
    assert "plotly.js" in html and 'src="https://cdn.plot.ly' not in html  # opens offline
    assert all(c in html for c in report["classes"])
    has_kaleido = importlib.util.find_spec("kaleido") is not None
    assert (folder / "confusion_matrix.png").is_file() == has_kaleido
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["model.keras", "classes.json", "report.json", *report["figures"]]
    )
    # plain built-in Keras: nothing in the saved graph names clothopt or a Lambda layer
    with zipfile.ZipFile(folder / report["model"]) as z:
        config = z.read("config.json").decode()
    assert "clothopt" not in config and "Lambda" not in config
    assert not list(folder.parent.glob(".final-*"))  # no temporary folder left
    out = finalized["out"]
    assert "95% bootstrap CI" in out and "confusion matrix" in out


def test_a_crash_mid_finalize_keeps_the_previous_result(
    finalized: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, storage = finalized["folder"], finalized["storage"]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def crash(*args: object, **kwargs: object) -> list[str]:
        raise RuntimeError("disk full")

    monkeypatch.setattr(finalize_mod, "_confusion_figure", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        finalize("tiny", storage, trial=0)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not list(folder.parent.glob(".final-*"))


def test_a_kill_between_the_two_renames_brings_the_previous_result_back(tmp_path: Path) -> None:
    dest = tmp_path / "final"
    dead = tmp_path / ".final-old-999999999-abc"  # moved aside by a process that is gone
    dead.mkdir()
    (dead / "report.json").write_text("{}")
    stale_tmp = tmp_path / ".final-tmp-999999999-xyz"
    stale_tmp.mkdir()
    store.recover(dest)
    assert (dest / "report.json").read_text() == "{}"
    assert not dead.exists() and not stale_tmp.exists()
    live = tmp_path / f".final-tmp-{os.getpid()}-mine"  # a running finalize's: left alone
    live.mkdir()
    store.recover(dest)
    assert live.is_dir()


def test_finalize_a_chosen_trial_replaces_the_result(finalized: dict[str, Any]) -> None:
    storage = finalized["storage"]
    st, _ = study_mod.load("tiny", storage)
    other = next(t for t in st.trials if t.number != finalized["report"]["trial"])
    argv = ["study", "finalize", "tiny", "--storage", storage, "--trial", str(other.number)]
    code, _, err = _run([*argv, "--epochs", "1", "--quiet", "--paper", "none"])
    assert code == 0, err
    report, folder = load_final("tiny", storage)
    assert report["trial"] == other.number and report["params"] == other.params
    # as many epochs as the search gave it: the same seed and batches, so the trial's own score
    assert report["epochs"] == 1 and report["final_validation_f1_per_epoch"] == [other.value]
    assert study_mod.load("tiny", storage)[0].user_attrs[FINAL_ATTR]["trial"] == other.number
    assert not list(folder.parent.glob(".final-*"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trial", "99"], "has no trial 99"),
        (["--resamples", "10"], "--resamples: must be between 1000 and"),
        (["--paper", "/nonexistent"], "no final_test.csv"),
    ],
)
def test_finalize_mistakes_are_one_line_errors(
    finalized: dict[str, Any], extra: list[str], message: str
) -> None:
    code, _, err = _run(["study", "finalize", "tiny", "--storage", finalized["storage"], *extra])
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_select_parses_the_trial_once_and_keeps_its_seed(
    finalized: dict[str, Any], tmp_path: Path
) -> None:
    from clothopt.trial_spec import trial_seed

    storage = finalized["storage"]
    st, cfg = study_mod.load("tiny", storage)
    chosen, spec = finalize_mod.select(st, cfg, None)
    assert chosen.value == max(t.value for t in st.trials)
    assert spec.to_params() == chosen.params and spec.is_paper
    assert spec.head.epochs == 5 and spec.seed == trial_seed(cfg.seed, chosen.params)
    _, longer = finalize_mod.select(st, cfg, chosen.number, epochs=7)
    assert longer.head.epochs == 7 and longer.seed == spec.seed
    # refused before any work, each with its type
    with pytest.raises(InvalidArgument, match="--epochs value 1001 must lie in"):
        finalize("tiny", storage, epochs=1001)
    with pytest.raises(NotFound, match="no such folder"):
        finalize("tiny", storage, not_clothing=tmp_path / "missing")
    with pytest.raises(NotFound, match="has no trial 99"):
        finalize_mod.pick_trial(st, 99)


def test_finalize_needs_a_complete_trial(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study_mod.create(
        backbone="mobilenet_025", space="quick", name="empty", storage=storage, data=str(data)
    )
    with pytest.raises(UserError, match="no complete trial"):
        finalize("empty", storage)
    with pytest.raises(UserError, match="not finalized"):
        load_final("empty", storage)


def test_study_report_prints_ours_beside_the_papers(
    finalized: dict[str, Any], tmp_path: Path
) -> None:
    paper = tmp_path / "paper"
    paper.mkdir()
    (paper / "final_test.csv").write_text(
        "metric,xception,densenet201\nf1_macro_pct,91.10,82.50\ntotal_parameters,20881970,18341194\n"
    )
    storage = finalized["storage"]
    code, out, _ = _run(["study", "report", "tiny", "--storage", storage, "--paper", str(paper)])
    assert code == 0
    report, _ = load_final("tiny", finalized["storage"])
    f1_line = next(line for line in out.splitlines() if line.startswith("test macro F1 %"))
    low, high = report["f1_macro_ci95"]
    ours = f"{100 * report['test']['f1_macro']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"
    assert ours in f1_line and "91.10" in f1_line and "82.50" in f1_line
    assert "20,881,970" in out and "paper: xception" in out
    alone = paper_table(report, None)
    assert "paper:" not in alone and ours in alone
    code, out, _ = _run(["study", "report", "tiny", "--storage", finalized["storage"], "--json"])
    assert code == 0 and json.loads(out) == report


# --------------------------------------------------------------------------- reproducible


FRESH_PROCESS = r"""
import json, os, sys
import numpy as np, keras
from PIL import Image

folder, test_dir = sys.argv[1], sys.argv[2]
model = keras.saving.load_model(os.path.join(folder, "model.keras"), safe_mode=True)
classes = json.load(open(os.path.join(folder, "classes.json")))
y, p, scores, accepted = [], [], [], []
for label, cls in enumerate(classes):  # flow_from_directory's order: classes, then files
    for name in sorted(os.listdir(os.path.join(test_dir, cls))):
        with Image.open(os.path.join(test_dir, cls, name)) as img:
            x = np.asarray(img.convert("RGB"), dtype=np.uint8)
        out = model.predict_on_batch(x[None])  # a dict: probabilities, clothing_score, accepted
        p.append(int(np.argmax(out["probabilities"][0])))
        scores.append(float(np.asarray(out["clothing_score"]).reshape(-1)[0]))
        accepted.append(bool(np.asarray(out["accepted"]).reshape(-1)[0] == 1.0))
        y.append(label)
y, p = np.array(y), np.array(p)
f1 = []
for c in range(len(classes)):
    tp = np.sum((y == c) & (p == c))
    denom = np.sum(y == c) + np.sum(p == c)
    f1.append(2 * tp / denom if denom else 0.0)
assert not any(m.startswith("clothopt") for m in sys.modules)
print(json.dumps({
    "f1_macro": float(np.mean(f1)), "predictions": p.tolist(), "outputs": sorted(model.output),
    "scores": scores, "accepted": accepted,
}))
"""


def _reproduce_in_fresh_process(folder: Path, test_dir: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(folder), str(test_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_saved_model_reproduces_the_reported_f1_in_a_fresh_process(
    real_subset: Path, real_weights: Path, tmp_path: Path
) -> None:
    """Done-when, small: real JPEGs of every size, pretrained MobileNet, plain Keras reloads."""
    storage = f"sqlite:///{tmp_path / 'studies' / 'clothopt.db'}"
    space = tmp_path / "space.toml"
    space.write_text(SPACE.replace("[32]", "[96]"))
    st, cfg = study_mod.create(
        backbone="mobilenet_025",
        space=str(space),
        name="real",
        storage=storage,
        data=str(real_subset),
        weights=str(real_weights),
    )
    objective = Objective(cfg, open_dataset(real_subset), FeatureCache(cfg.cache_dir))
    study_mod.optimize(st, cfg, objective, progress=False)
    report = finalize("real", storage)
    _, folder = load_final("real", storage)
    got = _reproduce_in_fresh_process(folder, real_subset / "test")
    assert got["predictions"] == report["test_predictions"]
    assert got["f1_macro"] == report["test"]["f1_macro"]  # exactly
    assert report["test"]["f1_macro"] > 0.3  # pretrained features learn something (chance 0.1)
    agree = report["cached_path_agreement"]
    assert agree["agree"] == agree["of"] == 40


def test_tiny_finalized_model_reproduces_in_a_fresh_process(finalized: dict[str, Any]) -> None:
    st, cfg = study_mod.load("tiny", finalized["storage"])
    folder = Path(st.user_attrs[FINAL_ATTR]["dir"])
    report, _ = load_final("tiny", finalized["storage"])  # the latest finalize's
    got = _reproduce_in_fresh_process(folder, Path(cfg.data) / "test")
    assert got["predictions"] == report["test_predictions"]
    assert got["f1_macro"] == report["test"]["f1_macro"]
    # the "not clothing" detector travels inside: plain Keras, safe mode, no clothopt
    assert got["outputs"] == ["accepted", "clothing_score", "probabilities"]
    assert np.mean(got["accepted"]) == report["ood"]["test_accepted_share"]


def test_finalize_ships_the_detector_fitted_on_train_and_reports_what_it_accepts(
    finalized: dict[str, Any],
) -> None:
    from clothopt.final.ood import calibrate, fit_detector
    from clothopt.final.rejection import THRESHOLD_MARGIN

    report, _ = load_final("tiny", finalized["storage"])
    _, cfg = study_mod.load("tiny", finalized["storage"])
    ood = report["ood"]
    det = ood["detector"]
    assert det["method"] == "knn" and det["k"] == 10 and det["accept"] == 0.95
    assert det["arrays"] == {"bank": [24, 256]}  # the train split's 8 x 3 images only
    # refit from the cached features: the same bank (checksum) and threshold
    ds = open_dataset(cfg.data)
    cache = FeatureCache(cfg.cache_dir)
    spec = get_backbone(cfg.backbone)
    size = report["params"]["image_size"]
    feats = {s: cache.get(spec, cfg.weights, cfg.seed, size, cfg.resize, ds[s]) for s in ds.splits}
    refit = calibrate(fit_detector("knn", feats["train"].x), feats["validation"].x)
    assert det["sha256"] == refit.checksum
    margin = THRESHOLD_MARGIN * abs(refit.threshold)
    assert refit.threshold - 2 * margin < det["threshold"] <= refit.threshold - margin
    assert ood["validation_accepted_share"] >= 0.95
    assert 0.0 <= ood["test_accepted_share"] <= 1.0
    samples = ood["samples"]
    if samples["images"]:  # scikit-image / scikit-learn pictures, scored by the saved model
        assert {"picture", "score", "accepted", "top_class"} <= set(samples["pictures"][0])
        assert 0.0 <= samples["auroc"] <= 1.0
    assert ("not_clothing_note" in ood) == (ood["not_clothing"] is None)
    # the CLI measures ../shared/datasets/not-clothing when it exists (the library: none given)
    shared = Path("../shared/datasets/not-clothing")
    assert (ood["not_clothing"] is not None) == shared.is_dir()
    if shared.is_dir():
        assert ood["not_clothing"]["dir"] == str(shared.absolute())
    out = finalized["out"]
    assert '"not clothing" detector in the model: knn, k=10' in out


@pytest.mark.slow
def test_pretrained_tiny_study_exports_what_the_cached_head_predicts(
    tmp_path: Path, real_weights: Path
) -> None:
    storage = _make_study(tmp_path, str(real_weights), counts=(8, 4, 10))
    report = finalize("tiny", storage)
    agree = report["cached_path_agreement"]
    assert agree["agree"] == agree["of"] == 30
    assert report["test"]["f1_macro"] == agree["cached_f1_macro"]
    assert report["test"]["f1_macro"] > 0.6  # colour classes: pretrained features separate them
    assert get_backbone(report["backbone"]).feature_dim * 3 + 3 == report["trainable_params"]


def test_finalized_files_are_downloadable_artifacts_of_the_trial(
    finalized: dict[str, Any],
) -> None:
    """The dashboard lists the report, figure and model file under the finalized trial."""
    from clothopt.dashboard import artifact_dir

    # read the current result: another test may have finalized another trial meanwhile
    report, folder = load_final("tiny", finalized["storage"])
    st, _ = study_mod.load("tiny", finalized["storage"])
    trial_id = engine.trial_id(st.trials[report["trial"]])
    attrs = engine.storage_of(st).get_study_system_attrs(engine.study_id(st))
    metas = [
        json.loads(v) for k, v in attrs.items() if k.startswith(f"dashboard:artifacts:{trial_id}:")
    ]
    assert {"report.json", "model.keras", "classes.json", *report["figures"]} <= {
        m["filename"] for m in metas
    }
    store = artifact_dir(finalized["storage"])
    models = [
        (store / m["artifact_id"]).read_bytes() for m in metas if m["filename"] == "model.keras"
    ]
    assert (folder / "model.keras").read_bytes() in models


# --------------------------------------------------------------------------- any head


def test_a_paper_trial_is_finalized_as_the_old_train_head_did(finalized: dict[str, Any]) -> None:
    """HeadTrainer for the paper head: the same losses, F1 and weights as objective.train_head,
    so a paper trial's report.json is what it was (no ``head`` entry, the three params)."""
    import keras

    from clothopt.end_to_end import train_head

    # the current result: another test may have finalized another trial meanwhile
    report, folder = load_final("tiny", finalized["storage"])
    _, cfg = study_mod.load("tiny", finalized["storage"])
    assert "head" not in report
    assert sorted(report["params"]) == ["batch_size", "image_size", "learning_rate"]
    data = open_dataset(cfg.data)
    cache, spec, size = FeatureCache(cfg.cache_dir), get_backbone(cfg.backbone), 32
    tr, va = (cache.get(spec, cfg.weights, cfg.seed, size, cfg.resize, data[s]) for s in SPLITS2)
    old = train_head(
        tr.x, tr.y, va.x, va.y, data.classes, report["params"]["learning_rate"],
        report["params"]["batch_size"], report["epochs"], report["seed"],
    )  # fmt: skip
    assert report["final_loss_per_epoch"] == old.epoch_loss
    assert report["final_validation_f1_per_epoch"] == old.epoch_f1
    model = keras.saving.load_model(folder / "model.keras", safe_mode=True)
    for got, want in zip(model.get_layer("logits").get_weights(), old.head_weights, strict=True):
        np.testing.assert_array_equal(got, want)


SPLITS2 = ("train", "validation")
WIDE = {
    "image_sizes": "32+48",
    "batch_size": 4,
    "learning_rate": 0.01,
    "epochs": 3,  # the search's: --epochs decides the final training's
    "hidden_layers": 1,
    "hidden_units": 8,
    "dropout": 0.2,
    "weight_decay": 1e-4,
    "label_smoothing": 0.1,
    "optimizer": "adamw",
    "schedule": "cosine",
    "normalize": "l2",
    "flip": True,
    "tta": True,
}


def test_a_wide_trial_exports_the_head_its_params_describe(
    tmp_path: Path, real_weights: Path
) -> None:
    """The saved model == the retrained wide head on features computed as cached (sizes
    concatenated, flipped after the resize), and the trainer's weights are the model's."""
    import keras
    import optuna
    from optuna.distributions import CategoricalDistribution

    from clothopt.model.compose import compose
    from clothopt.model.head import HeadParams, HeadTrainer, head_logits, normalize_features
    from clothopt.pipeline import batch_order
    from clothopt.trial_spec import trial_seed

    data = make_dataset(tmp_path / "data", counts=(8, 4, 6))
    storage = f"sqlite:///{tmp_path / 'studies' / 'clothopt.db'}"
    st, cfg = study_mod.create(
        backbone="mobilenet_025",
        space="quick",
        name="wide",
        storage=storage,
        data=str(data),
        weights=str(real_weights),  # pretrained: random-weight features hardly differ
    )
    dists = {k: CategoricalDistribution([v]) for k, v in WIDE.items()}
    st.add_trial(optuna.trial.create_trial(params=WIDE, distributions=dists, value=0.5))
    report = finalize("wide", storage, epochs=2)
    assert report["params"] == WIDE and report["epochs"] == 2
    head = report["head"]
    assert head["hidden_layers"] == 1 and head["optimizer"] == "adamw" and head["epochs"] == 2
    assert head["image_sizes"] == [32, 48] and head["flip"] and head["tta"]
    assert 0.0 <= head["final_validation_f1_macro_tta"] <= 1.0
    assert report["trainable_params"] == (2 * 256) * 8 + 8 + 8 * 3 + 3
    assert "32x32 and 48x48" in report["model_input"] and "flipped" in report["model_input"]

    # features as the cache holds them, computed here apart: PIL nearest resize, then the flip
    dataset, spec = open_dataset(data), get_backbone("mobilenet_025")
    extractors = {s: compose(spec, s, str(real_weights)) for s in (32, 48)}

    def features(split: str, flip: bool) -> np.ndarray:
        out = []
        for s in (32, 48):
            imgs = []
            for path in dataset[split].paths:
                with Image.open(path) as img:
                    pixels = np.asarray(img.convert("RGB").resize((s, s), Image.NEAREST))
                    imgs.append(np.ascontiguousarray(pixels[:, ::-1]) if flip else pixels)
            out.append(np.asarray(extractors[s].predict_on_batch(np.stack(imgs))))
        return np.concatenate(out, axis=1)

    x_train = np.concatenate([features("train", False), features("train", True)])
    y_train = np.concatenate([dataset["train"].labels] * 2)
    params = HeadParams.from_params({**WIDE, "epochs": 2})
    retrained = HeadTrainer().train(
        x_train, y_train, features("validation", False), dataset["validation"].labels,
        dataset.classes, params, trial_seed(cfg.seed, WIDE), batch_order,
    )  # fmt: skip
    _, folder = load_final("wide", storage)
    model = keras.saving.load_model(folder / "model.keras", safe_mode=True)
    saved = [*model.get_layer("hidden0").get_weights(), *model.get_layer("logits").get_weights()]
    for got, want in zip(saved, retrained.weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    def logits(x: np.ndarray) -> np.ndarray:
        return head_logits(retrained.weights, normalize_features(x, x, "l2")[1])

    want = (logits(features("test", False)) + logits(features("test", True))) / 2
    want = np.exp(want - want.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    got = []
    for path in dataset["test"].paths:
        with Image.open(path) as img:
            out = model.predict_on_batch(np.asarray(img.convert("RGB"))[None])
            got.append(np.asarray(out["probabilities"])[0])
    np.testing.assert_allclose(np.stack(got), want, rtol=1e-4, atol=1e-5)
    assert report["test_predictions"] == np.argmax(want, axis=1).tolist()
    agree = report["cached_path_agreement"]
    assert agree["agree"] == agree["of"] == len(dataset["test"])


def test_a_full_disk_after_the_training_is_one_line_and_keeps_the_result(
    finalized: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    folder, storage = finalized["folder"], finalized["storage"]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    st, _ = study_mod.load("tiny", storage)
    record = st.user_attrs[FINAL_ATTR]

    def full(*args: object, **kwargs: object) -> list[str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(finalize_mod, "_confusion_figure", full)
    code, _, err = run_cli(["study", "finalize", "tiny", "--storage", storage, "--quiet"])
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"clothopt: error: cannot write {folder}: No space left on device"
    ]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not list(folder.parent.glob(".final-*"))
    st, _ = study_mod.load("tiny", storage)
    assert st.user_attrs[FINAL_ATTR] == record


# --------------------------------------------------------------------------- an ensemble

FOLDED = {
    "image_size": 32,
    "batch_size": 4,
    "learning_rate": 0.01,
    "hidden_layers": 1,
    "hidden_units": 8,
    "normalize": "standardize",  # each member's own train statistics travel in the model
    "flip": True,
    "tta": True,
}


def _folds_study(
    factory: pytest.TempPathFactory, name: str, trials: list[tuple[dict[str, Any], float]]
) -> tuple[Any, Path, str]:
    """A ``folds = 3`` study ``name`` on pretrained weights (the members' answers are not near
    ties) holding ``trials`` as complete trials (params, value); its config, data folder and
    storage URL."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    from conftest import REAL_WEIGHTS

    if not REAL_WEIGHTS.is_file():
        pytest.skip("the shared pretrained weights are not here")
    root = factory.mktemp(name)
    data = make_dataset(root / "data", counts=(9, 3, 6))
    (root / "space.toml").write_text("folds = 3\n" + SPACE)
    storage = f"sqlite:///{root / 'studies' / 'clothopt.db'}"
    st, cfg = study_mod.create(
        backbone="mobilenet_025", space=str(root / "space.toml"), name=name,
        storage=storage, data=str(data), weights=str(REAL_WEIGHTS),
    )  # fmt: skip
    choices: dict[str, list[Any]] = {}  # one distribution per parameter across the trials
    for params, _ in trials:
        for k, v in params.items():
            choices.setdefault(k, []).extend([] if v in choices.get(k, []) else [v])
    for params, value in trials:
        dists = {k: CategoricalDistribution(choices[k]) for k in params}
        st.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    return cfg, data, storage


@pytest.fixture(scope="module")
def folded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A study whose space sets ``folds = 3``, its one trial finalized (pretrained weights, so
    the members' answers are not near ties)."""
    cfg, data, storage = _folds_study(tmp_path_factory, "folded", [(FOLDED, 0.5)])
    report = finalize("folded", storage, epochs=2)
    _, folder = load_final("folded", storage)
    return {"report": report, "folder": folder, "config": cfg, "data": data, "storage": storage}


def test_a_k_fold_study_ships_the_average_of_its_fold_heads(folded: dict[str, Any]) -> None:
    """Member k is the head the one pipeline trains on the other folds of train + validation
    (split from the study seed, the trial's seed); the model averages the members'
    probabilities and answers as the cached-feature ensemble does."""
    import keras

    from clothopt.folds import stratified_folds
    from clothopt.model.head import HeadTrainer
    from clothopt.pipeline import train_spec
    from clothopt.protocol import Protocol, protocol_inputs, protocol_members
    from clothopt.trial_spec import TrialSpec

    report, folder, cfg = folded["report"], folded["folder"], folded["config"]
    model = keras.saving.load_model(folder / "model.keras", safe_mode=True)
    members = [f"member{i}_probabilities" for i in range(3)]
    probe = keras.Model(
        model.input, [model.get_layer(n).output for n in members] + [model.output["probabilities"]]
    )
    dataset = open_dataset(folded["data"])
    probs = []
    for path in dataset["test"].paths:
        with Image.open(path) as img:
            probs.append([np.asarray(o)[0] for o in probe.predict_on_batch(
                np.asarray(img.convert("RGB"), "float32")[None])])  # fmt: skip
    each = np.array([[p[i] for p in probs] for i in range(4)])  # (3 members + mean, N, C)
    np.testing.assert_allclose(each[3], each[:3].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert report["test_predictions"] == np.argmax(each[3], axis=1).tolist()
    agree = report["cached_path_agreement"]
    assert agree["agree"] == agree["of"] == len(dataset["test"])
    assert "ensemble of 3 heads" in agree["reference"]
    assert report["trainable_params"] == 3 * (256 * 8 + 8 + 8 * 3 + 3)
    # the pick was raced: the one complete trial re-evaluated with 3 fresh seeds x its 3 folds
    selection, number = report["selection"], report["trial"]
    assert selection["pick"] == number and selection["protocol"] == {"repeats": 3, "folds": 3}
    assert [(r["trial"], r["n"], r["rank"]) for r in selection["rows"]] == [(number, 9, 1)]

    # member 1, trained here apart on its fold with the objective's pool, split and seed
    spec = TrialSpec.from_params(FOLDED, backbone="mobilenet_025", study_seed=cfg.seed, epochs=2)
    protocol = Protocol(repeats=1, folds=3)
    layouts = protocol_inputs(FeatureCache(cfg.cache_dir), dataset, cfg, spec, protocol)
    pool, pool_views, members = protocol_members(spec, layouts, protocol, cfg.seed, 0)
    y = np.concatenate([dataset["train"].labels, dataset["validation"].labels])
    np.testing.assert_array_equal(pool_views.y, y)
    rows, held_out = stratified_folds(y, 3, cfg.seed)[1]
    np.testing.assert_array_equal(members[1].val_examples, held_out)
    assert members[1].seed == spec.seed  # one repeat: every fold trains with the trial's seed
    alone = train_spec(
        spec, {"train": pool, "validation": pool_views.take(held_out)}, dataset.classes,
        HeadTrainer(1), seed=spec.seed, train_rows=rows,
    )  # fmt: skip
    saved = [
        *model.get_layer("member1_hidden0").get_weights(),
        *model.get_layer("member1_logits").get_weights(),
    ]
    for got, want in zip(saved, alone.weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert report["estimate"]["member_f1_macro"][1] == alone.val_metrics["f1_macro"]


def test_a_k_fold_report_states_its_estimate_beside_the_test_figure(
    folded: dict[str, Any],
) -> None:
    report = folded["report"]
    est = report["estimate"]
    f1 = est["member_f1_macro"]
    assert (est["members"], est["folds"], est["repeats"], len(f1)) == (3, 3, 1, 3)
    assert est["mean"] == pytest.approx(np.mean(f1))
    assert est["sd"] == pytest.approx(np.std(f1, ddof=1))
    assert est["se"] == pytest.approx(np.std(f1, ddof=1) / np.sqrt(3))
    assert 0.0 <= est["pooled_oof_f1_macro"] <= 1.0
    assert est["test_f1_macro"] == report["test"]["f1_macro"]
    assert "out-of-fold" in est["how"] and "optimistic" in est["how"].lower()
    assert report["selection"]["pick"] == report["trial"]  # raced (the table: the test above)
    assert len(report["final_validation_f1_per_epoch"]) == 2  # the members' mean per epoch
    code, out, err = run_cli(["study", "report", "folded", "--storage", folded["storage"]])
    assert code == 0, err
    assert "estimate (3 heads: 3 folds)" in out and f"{est['mean']:.4f}" in out


def test_a_k_fold_model_reproduces_in_a_fresh_process(folded: dict[str, Any]) -> None:
    got = _reproduce_in_fresh_process(folded["folder"], folded["data"] / "test")
    assert got["predictions"] == folded["report"]["test_predictions"]
    assert got["f1_macro"] == folded["report"]["test"]["f1_macro"]


def test_a_single_fit_report_estimates_by_the_trial_value(finalized: dict[str, Any]) -> None:
    est = finalized["report"]["estimate"]
    assert est["members"] == 1 and est["sd"] is None
    assert est["mean"] == finalized["report"]["trial_validation_f1_macro"]
    assert "optimistic" in est["how"]


# --------------------------------------------------------------------------- a blend

BLENDED = [
    (FOLDED, 0.5),
    ({"image_sizes": "32+48", "batch_size": 4, "learning_rate": 0.01, "normalize": "l2"}, 0.45),
    ({"image_size": 32, "batch_size": 8, "learning_rate": 0.003, "flip": False}, 0.4),
]


@pytest.fixture(scope="module")
def blended(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A ``folds = 3`` study of three configurations (other sizes, TTA, normalisation),
    finalized as a blend of all three; ensemble selection's counts are fixed (1, 2, 1) by
    race rank so every member kind ships (the selection itself: tests/test_selection.py)."""
    from clothopt import selection

    _, data, storage = _folds_study(tmp_path_factory, "blended", BLENDED)
    seen: list[Any] = []

    def fixed(probabilities: Any, y: Any, rounds: int) -> list[int]:
        seen.append((len(probabilities), rounds))
        return [1, 2, 1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(selection, "ensemble_selection", fixed)
        report = finalize("blended", storage, epochs=2, race_repeats=1, blend=3)
    _, folder = load_final("blended", storage)
    return {"report": report, "folder": folder, "data": data, "storage": storage, "seen": seen}


def test_a_blend_ships_its_configurations_weighed_in_one_model(blended: dict[str, Any]) -> None:
    """Every candidate's 3 fold members in the model, each configuration's probabilities
    weighed by its count; the model answers as the cached-feature blend does, reads the main
    configuration's features as ``pool``, and the report holds the weights and the estimate."""
    import keras

    report, folder = blended["report"], blended["folder"]
    assert blended["seen"] == [(3, blend_mod.BLEND_ROUNDS)]
    raced = [r["trial"] for r in report["selection"]["rows"]]
    rows = report["blend"]["rows"]
    first = min(raced)  # the grid sampler enqueued its own points before ours
    assert [r["trial"] for r in rows] == raced and sorted(raced) == [first, first + 1, first + 2]
    assert [r["weight"] for r in rows] == [0.25, 0.5, 0.25]
    assert report["trial"] == raced[1]  # the largest weight is the main configuration
    main = BLENDED[raced[1] - first][0]
    assert report["params"] == _params_of(main)
    model = keras.saving.load_model(folder / "model.keras", safe_mode=True)
    members = [f"member{i}_probabilities" for i in range(9)]
    probe = keras.Model(
        model.input, [model.get_layer(n).output for n in members] + [model.output["probabilities"]]
    )
    dataset = open_dataset(blended["data"])
    path = dataset["test"].paths[0]
    with Image.open(path) as img:
        out = [np.asarray(o)[0] for o in probe.predict_on_batch(
            np.asarray(img.convert("RGB"), "float32")[None])]  # fmt: skip
    shares = np.repeat([0.25, 0.5, 0.25], 3) / 3
    np.testing.assert_allclose(out[-1], np.tensordot(shares, out[:-1], 1), rtol=1e-5, atol=1e-6)
    sizes = main.get("image_sizes", "32")
    assert model.get_layer("pool").output.shape[-1] == 256 * len(str(sizes).split("+"))
    agree = report["cached_path_agreement"]
    assert agree["agree"] == agree["of"] == len(dataset["test"])
    assert "blend of 3 configurations (9 heads)" in agree["reference"]
    est = report["estimate"]
    assert "blend" in est["how"] and len(est["member_f1_macro"]) == 3
    assert est["pooled_oof_f1_macro"] == report["blend"]["pooled_oof_f1_macro"]
    assert "a blend" in report["model_input"]
    assert est["blend"] is True
    code, out, err = run_cli(["study", "report", "blended", "--storage", blended["storage"]])
    assert code == 0, err
    assert "a blend of 3 configurations: trial" in out and "× 0.50" in out
    assert (
        f"estimate (the blend, 3 folds): its out-of-fold macro-F1 per fold {est['mean']:.4f}" in out
    )
    got = _reproduce_in_fresh_process(folder, blended["data"] / "test")
    assert got["predictions"] == report["test_predictions"]


def _params_of(params: dict[str, Any]) -> dict[str, Any]:
    from clothopt.trial_spec import TrialSpec

    spec = TrialSpec.from_params(params, backbone="mobilenet_025", study_seed=0, epochs=2)
    return spec.to_params()


def test_blend_mistakes_are_refused_before_any_work(
    blended: dict[str, Any], finalized: dict[str, Any]
) -> None:
    storage = blended["storage"]
    with pytest.raises(InvalidArgument, match="--race-top"):
        finalize("blended", storage, blend=3, race_top=2)
    with pytest.raises(InvalidArgument, match="no --trial"):
        finalize("blended", storage, blend=2, trial=0)
    with pytest.raises(InvalidArgument, match="single fits"):
        finalize("tiny", finalized["storage"], blend=2)
    code, _, err = run_cli(["study", "finalize", "blended", "--storage", storage, "--blend", "-1"])
    assert code == 2 and "Traceback" not in err


@pytest.mark.parametrize(
    ("asked", "space_blend", "folds", "race_top", "one_network", "cached", "want"),
    [
        (None, 0, 5, 5, False, True, 0),  # a space without blend: the pick alone
        (None, 5, 5, 5, False, True, 5),  # the space's
        (None, 5, 5, 3, False, True, 3),  # within the race
        (None, 5, 5, 1, False, True, 0),  # a race of one blends nothing
        (None, 5, 5, 0, False, True, 0),  # no race
        (None, 5, 5, 5, True, True, 0),  # --trial or --fine-tune: one network
        (None, 5, 5, 5, False, False, 0),  # end to end: nothing raced
        (0, 5, 5, 5, False, True, 0),  # asked for none
        (1, 0, 5, 5, False, True, 0),
        (3, 0, 5, 5, False, True, 3),  # asked, the space has none
        (3, 0, 5, 2, False, True, "race-top"),
        (3, 0, 5, 5, True, True, "no --trial"),
        (3, 0, 0, 5, False, True, "single fits"),
        (3, 0, 5, 5, False, False, "end to end"),
    ],
)
def test_how_many_configurations_finalize_blends(
    asked: int | None, space_blend: int, folds: int, race_top: int, one_network: bool,
    cached: bool, want: int | str,
) -> None:  # fmt: skip
    from dataclasses import replace
    from types import SimpleNamespace

    from clothopt.spaces import load_space

    space = replace(load_space("wide"), blend=space_blend, folds=folds, repeats=1)
    config: Any = SimpleNamespace(space=space, use_cache=cached, name="s")
    if isinstance(want, str):
        with pytest.raises(InvalidArgument, match=want):
            blend_mod.blend_count(asked, config, race_top, one_network)
    else:
        assert blend_mod.blend_count(asked, config, race_top, one_network) == want
