"""``compare backbones``: Tables I and III, intervals, McNemar tests and the HTML report.

Small real studies (synthetic images, mobilenet_025); the finalized part follows finalize's
``report.json`` contract. Every number is checked against an independent computation:
the trials themselves, scikit-learn and statsmodels.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests

from clothopt import paths
from clothopt import study as study_mod
from clothopt.cli import COMMANDS, main
from clothopt.data import open_dataset
from clothopt.errors import UserError
from clothopt.features import FeatureCache
from clothopt.final.store import FINAL_ATTR
from clothopt.metrics import classification_metrics
from clothopt.objective import Objective
from clothopt.reports.backbones import backbone_report
from clothopt.reports.stats import holm, mcnemar
from conftest import REAL_WEIGHTS, make_dataset

PAPER = Path(__file__).resolve().parents[2] / "shared" / "paper"
SPACE = """
sampler = "grid"
epochs = 2
[params]
image_size = [64]
batch_size = [4, 8]
learning_rate = [0.1]
"""
# test accuracy of each study's fabricated final model: A and B close, C far off
ACCURACY = {"a": 0.9, "b": 0.85, "c": 0.45}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _num(text: str) -> float | None:
    return None if text == "" else float(text)


# pretrained features when the shared weights are here (a random MobileNet's are ~0, so every
# grid point would score the same and Table I could not tell its rows apart)
WEIGHTS = str(REAL_WEIGHTS) if REAL_WEIGHTS.is_file() else "none"


def _run_study(storage: str, data: Path, space: Path, name: str, seed: int) -> None:
    st, cfg = study_mod.create(
        backbone="mobilenet_025",
        space=str(space),
        name=name,
        storage=storage,
        data=str(data),
        weights=WEIGHTS,
        seed=seed,
    )
    dataset = open_dataset(data)
    study_mod.optimize(
        st, cfg, Objective(cfg, dataset, FeatureCache(cfg.cache_dir)), progress=False
    )


def _finalize_by_hand(storage: str, name: str, accuracy: float, seed: int) -> dict[str, Any]:
    """A report.json as ``clothopt study finalize`` writes it, with made-up test predictions."""
    st, cfg = study_mod.load(name, storage)
    labels = open_dataset(cfg.data)["test"].labels
    rng = np.random.default_rng(seed)
    wrong = rng.random(len(labels)) > accuracy
    preds = np.where(wrong, (labels + rng.integers(1, 3, len(labels))) % 3, labels)
    test = classification_metrics(labels, preds, cfg.classes)
    best = st.best_trial
    folder = paths.study_dir(storage, name) / "final"
    report = {
        "study": name,
        "backbone": cfg.backbone,
        "weights": cfg.weights,
        "trial": best.number,
        "params": dict(best.params),
        "epochs": 5,
        "classes": list(cfg.classes),
        "test": test,
        "f1_macro_ci95": [test["f1_macro"] - 0.07, min(1.0, test["f1_macro"] + 0.05)],
        "bootstrap": {"resamples": 2000, "seed": 0, "method": "percentile"},
        "test_labels": labels.tolist(),
        "test_predictions": preds.tolist(),
        "total_params": int(best.user_attrs["total_params"]),
        "trainable_params": int(best.user_attrs["trainable_params"]),
        "search_seconds": 12.5 + seed,
        "search_wall_seconds": 20.0,
        "final_train_seconds": 3.25 + seed,
        "model": str(folder / "model.keras"),
        "versions": {},
        "created": "2025-01-01T00:00:00Z",
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report))
    st.set_user_attr(
        FINAL_ATTR, {"dir": str(folder), "trial": best.number, "test_f1_macro": test["f1_macro"]}
    )
    return report


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three small real studies, finalized (by hand, per the contract)."""
    root = tmp_path_factory.mktemp("backbones")
    data = make_dataset(root / "data", counts=(8, 4, 30))
    space = root / "tiny.toml"
    space.write_text(SPACE)
    storage = f"sqlite:///{root / 'studies' / 'clothopt.db'}"
    finals = {}
    for seed, name in enumerate(ACCURACY):
        _run_study(storage, data, space, name, seed)
        finals[name] = _finalize_by_hand(storage, name, ACCURACY[name], seed)
    out = root / "report"
    report = backbone_report(list(ACCURACY), storage, out, paper=None)
    return {"storage": storage, "finals": finals, "out": out, "report": report, "root": root}


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("n", "acc_a", "acc_b", "exact"),
    [
        (40, 0.9, 0.85, None),
        (400, 0.9, 0.8, None),
        (372, 0.92, 0.91, None),
        (300, 0.6, 0.6, True),
        (300, 0.6, 0.6, False),
        (50, 0.7, 0.9, False),
    ],
)
def test_mcnemar_equals_statsmodels(n: int, acc_a: float, acc_b: float, exact: bool | None) -> None:
    rng = np.random.default_rng(n)
    y = rng.integers(0, 5, n)
    a = np.where(rng.random(n) < acc_a, y, (y + 1) % 5)
    b = np.where(rng.random(n) < acc_b, y, (y + 2) % 5)
    got = mcnemar(y, a, b, exact=exact)
    ra, rb = a == y, b == y
    table = np.array([[np.sum(ra & rb), np.sum(ra & ~rb)], [np.sum(~ra & rb), np.sum(~ra & ~rb)]])
    use_exact = exact if exact is not None else table[0, 1] + table[1, 0] < 25
    want = sm_mcnemar(table, exact=use_exact, correction=True)
    assert got["a_only"] == table[0, 1] and got["b_only"] == table[1, 0]
    assert got["p_value"] == pytest.approx(want.pvalue, rel=1e-9, abs=1e-15)
    assert got["statistic"] == pytest.approx(want.statistic, rel=1e-12)
    assert got["method"].startswith("exact" if use_exact else "chi-square")


def test_mcnemar_without_disagreement_is_p_one() -> None:
    y = np.array([0, 1, 2, 1])
    assert mcnemar(y, y, y)["p_value"] == 1.0
    assert mcnemar(y, y, y, exact=False)["p_value"] == 1.0  # statsmodels divides by zero here
    with pytest.raises(ValueError, match="lengths differ"):
        mcnemar(y, y, y[:3])


def test_holm_equals_statsmodels() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.5, 0.2]
    np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=1e-12)


# --------------------------------------------------------------------------- the report


def test_table_one_holds_every_trials_validation_f1(three: dict[str, Any]) -> None:
    rows = _read_csv(three["out"] / "table1_validation_f1.csv")
    assert list(rows[0]) == ["image_size", "batch_size", "learning_rate", "a", "b", "c"]
    assert len(rows) == 2  # the tiny grid: one size, two batch sizes, one learning rate
    for name in ACCURACY:
        st, _ = study_mod.load(name, three["storage"])
        trials = st.get_trials(deepcopy=False)
        assert len(trials) == 2
        for t in trials:
            row = next(
                r
                for r in rows
                if int(r["batch_size"]) == t.params["batch_size"]
                and float(r["learning_rate"]) == t.params["learning_rate"]
            )
            assert float(row[name]) == pytest.approx(100 * t.value, abs=1e-5)
        # the column's best is marked in the Markdown
        best = max(100 * t.value for t in trials)
        assert f"**{best:.2f}**" in three["report"].markdown
    if WEIGHTS != "none":  # the two rows differ somewhere, so a swap would show
        assert any(rows[0][n] != rows[1][n] for n in ACCURACY)


def test_table_three_and_intervals_come_from_the_finalized_reports(three: dict[str, Any]) -> None:
    rows = {r["study"]: r for r in _read_csv(three["out"] / "table3_test.csv")}
    assert set(rows) == set(ACCURACY)
    for name, final in three["finals"].items():
        row = rows[name]
        y, p = final["test_labels"], final["test_predictions"]
        assert row["status"] == "finalized"
        kw = {"average": "macro", "zero_division": 0, "labels": [0, 1, 2]}
        assert _num(row["test_f1"]) == pytest.approx(100 * f1_score(y, p, **kw), abs=1e-4)
        assert _num(row["test_precision"]) == pytest.approx(
            100 * precision_score(y, p, **kw), abs=1e-4
        )
        assert _num(row["test_recall"]) == pytest.approx(100 * recall_score(y, p, **kw), abs=1e-4)
        assert _num(row["test_accuracy"]) == pytest.approx(100 * accuracy_score(y, p), abs=1e-4)
        low, high = final["f1_macro_ci95"]
        assert _num(row["test_f1_ci95_low"]) == pytest.approx(100 * low, abs=1e-4)
        assert _num(row["test_f1_ci95_high"]) == pytest.approx(100 * high, abs=1e-4)
        assert int(row["total_params"]) == final["total_params"]
        assert _num(row["final_train_seconds"]) == final["final_train_seconds"]
        assert _num(row["search_seconds"]) == final["search_seconds"]
        assert int(row["batch_size"]) == final["params"]["batch_size"]


def test_every_pair_gets_mcnemar_as_statsmodels_computes_it(three: dict[str, Any]) -> None:
    rows = _read_csv(three["out"] / "mcnemar.csv")
    assert [(r["a"], r["b"]) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    finals = three["finals"]
    p_values = []
    methods = set()
    for r in rows:
        y = np.array(finals[r["a"]]["test_labels"])
        ra = np.array(finals[r["a"]]["test_predictions"]) == y
        rb = np.array(finals[r["b"]]["test_predictions"]) == y
        table = [[np.sum(ra & rb), np.sum(ra & ~rb)], [np.sum(~ra & rb), np.sum(~ra & ~rb)]]
        exact = table[0][1] + table[1][0] < 25
        want = sm_mcnemar(np.array(table), exact=exact, correction=True).pvalue
        assert int(r["a_only_correct"]) == table[0][1]
        assert int(r["b_only_correct"]) == table[1][0]
        assert float(r["p_value"]) == pytest.approx(want, rel=1e-5)
        assert r["significant_05"] == str(want < 0.05)
        p_values.append(want)
        methods.add(r["method"])
    # both branches of the rule ran: A vs B disagree on few images, A vs C on many
    assert len(methods) == 2
    adjusted = multipletests(p_values, method="holm")[1]
    for r, want in zip(rows, adjusted, strict=True):
        assert float(r["p_holm"]) == pytest.approx(want, rel=1e-5)
    assert rows[1]["significant_05"] == "True"  # 90% vs 45% accuracy on 90 images


def test_every_pair_gets_a_paired_bootstrap_of_the_f1_difference(three: dict[str, Any]) -> None:
    from sklearn.metrics import f1_score

    rows = _read_csv(three["out"] / "f1_difference.csv")
    assert [(r["a"], r["b"]) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    finals = three["finals"]
    p_values = []
    for r in rows:
        y = np.array(finals[r["a"]]["test_labels"])
        pa = np.array(finals[r["a"]]["test_predictions"])
        pb = np.array(finals[r["b"]]["test_predictions"])
        labels = list(range(len(finals[r["a"]]["classes"])))

        def f1(idx: np.ndarray, pred: np.ndarray, y: np.ndarray = y, k: list = labels) -> float:
            return f1_score(y[idx], pred[idx], labels=k, average="macro", zero_division=0)

        # the same resampled images for both models, finalize's resamples and seed
        idx = np.random.default_rng(0).integers(0, len(y), (2000, len(y)))
        diffs = np.array([f1(i, pa) - f1(i, pb) for i in idx])
        low, high = np.percentile(diffs, [2.5, 97.5])
        assert float(r["f1_diff"]) == pytest.approx(
            100 * (f1(np.arange(len(y)), pa) - f1(np.arange(len(y)), pb)), abs=1e-4
        )
        assert float(r["f1_diff_ci95_low"]) == pytest.approx(100 * low, abs=1e-4)
        assert float(r["f1_diff_ci95_high"]) == pytest.approx(100 * high, abs=1e-4)
        p_values.append(max(2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)), 1 / 2000))
        assert float(r["f1_diff_p"]) == pytest.approx(p_values[-1], abs=1e-6)
    adjusted = multipletests(p_values, method="holm")[1]
    for r, want in zip(rows, adjusted, strict=True):
        assert float(r["f1_diff_p_holm"]) == pytest.approx(min(want, 1.0), abs=1e-6)
    assert rows[1]["f1_diff_significant_holm_05"] == "True"  # 90% vs 45% accuracy
    assert "Paired bootstrap of the test macro-F1 difference" in three["report"].markdown


def test_per_class_f1_equals_sklearn(three: dict[str, Any]) -> None:
    rows = _read_csv(three["out"] / "per_class_f1.csv")
    for name, final in three["finals"].items():
        want = f1_score(
            final["test_labels"], final["test_predictions"], average=None, labels=[0, 1, 2]
        )
        got = [float(r[name]) for r in rows]
        np.testing.assert_allclose(got, 100 * want, atol=1e-4)
    assert [r["class"] for r in rows] == ["hat", "pants", "shoes"]
    assert [int(r["support"]) for r in rows] == [30, 30, 30]


def test_html_report_is_self_contained_with_every_figure(three: dict[str, Any]) -> None:
    page = (three["out"] / "report.html").read_text()
    assert "plotly.js v" in page or "Plotly" in page[:5_000_000]
    assert len(page) > 3_000_000  # the plotly.js bundle itself, inlined
    assert not re.search(r"<script[^>]+src=", page)  # nothing fetched: opens offline
    assert page.count("window.PLOTLYENV") >= 1
    for title in (
        "Validation macro-F1 over the grid: a",
        "Test macro-F1 with its 95% bootstrap interval",
        "Parameters",
        "Durations (seconds)",
        "Per-class test F1",
        "Confusion matrix (test): c",
    ):
        assert title in page, title
    # the confusion matrix shown is the test predictions' own
    final = three["finals"]["c"]
    cm = classification_metrics(
        np.array(final["test_labels"]), np.array(final["test_predictions"]), ["h", "p", "s"]
    )["confusion_matrix"]
    assert final["test"]["confusion_matrix"] == cm
    assert json.dumps(cm).replace(" ", "") in page.replace(" ", "")


def test_a_study_not_finalized_still_fills_table_one(three: dict[str, Any]) -> None:
    storage, out = three["storage"], three["root"] / "partial"
    st, _ = study_mod.load("c", storage)
    saved = st.user_attrs[FINAL_ATTR]
    st.set_user_attr(FINAL_ATTR, None)  # as if never finalized
    try:
        stdout, stderr = io.StringIO(), io.StringIO()
        argv = ["compare", "backbones", "a", "c", "--storage", storage, "--out", str(out)]
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            assert main([*argv, "--paper", "none"]) == 0
    finally:
        st.set_user_attr(FINAL_ATTR, saved)
    rows = {r["study"]: r for r in _read_csv(out / "table3_test.csv")}
    assert rows["c"]["status"] == "not finalized" and rows["c"]["test_f1"] == ""
    assert _read_csv(out / "mcnemar.csv") == []  # one finalized study: no pair to test
    t1 = _read_csv(out / "table1_validation_f1.csv")
    assert all(r["c"] != "" for r in t1)
    assert "not finalized" in stderr.getvalue()
    assert "## Table I" in stdout.getvalue()


def test_different_test_images_are_refused(three: dict[str, Any]) -> None:
    storage = three["storage"]
    st, _ = study_mod.load("b", storage)
    path = Path(st.user_attrs[FINAL_ATTR]["dir"]) / "report.json"
    original = path.read_text()
    report = json.loads(original)
    report["test_labels"] = report["test_labels"][::-1]  # same images, another order
    path.write_text(json.dumps(report))
    try:
        with pytest.raises(UserError, match="same test images in the same order"):
            backbone_report(["a", "b"], storage, three["root"] / "bad")
    finally:
        path.write_text(original)


def test_the_papers_columns_sit_beside_ours(three: dict[str, Any]) -> None:
    if not (PAPER / "grid_validation_f1.csv").is_file():
        pytest.skip("the paper's tables are not at ../shared/paper")
    out = three["root"] / "with-paper"
    backbone_report(["a", "b"], three["storage"], out, paper=PAPER)
    rows = _read_csv(out / "table1_validation_f1.csv")
    paper = _read_csv(PAPER / "grid_validation_f1.csv")
    assert len(rows) == 2 + len(paper)  # our tiny grid does not overlap the paper's
    for want in paper:
        got = next(
            r
            for r in rows
            if r["image_size"] == want["image_size"]
            and r["batch_size"] == want["batch_size"]
            and float(r["learning_rate"]) == float(want["learning_rate"])
        )
        assert float(got["paper xception"]) == pytest.approx(float(want["xception"]))
        assert got["a"] == ""
    t3 = [r for r in _read_csv(out / "table3_test.csv") if r["source"] == "paper"]
    assert {r["backbone"] for r in t3} == {
        "efficientnetb6",
        "efficientnetb7",
        "densenet201",
        "xception",
    }
    b7 = next(r for r in t3 if r["backbone"] == "efficientnetb7")
    assert float(b7["test_f1"]) == 92.2 and int(b7["total_params"]) == 64123297


@pytest.mark.slow  # two finalizes: retrain, export a model, score it image by image
def test_with_the_real_finalize(three: dict[str, Any]) -> None:
    """Once ``clothopt study finalize`` exists, its report.json feeds this report unchanged."""
    if "study finalize" not in COMMANDS:
        pytest.skip("clothopt study finalize is not there yet")
    root = three["root"] / "real-final"
    data = make_dataset(root / "data", counts=(8, 4, 6))
    space = root / "tiny.toml"
    space.write_text(SPACE)
    storage = f"sqlite:///{root / 'studies' / 'clothopt.db'}"
    for seed, name in enumerate(("x", "y")):
        _run_study(storage, data, space, name, seed)
        with contextlib.redirect_stdout(io.StringIO()):
            argv = ["study", "finalize", name, "--storage", storage, "--paper", "none"]
            assert main([*argv, "--epochs", "2", "--quiet"]) == 0
    report = backbone_report(["x", "y"], storage, root / "out")
    rows = {r["study"]: r for r in _read_csv(root / "out" / "table3_test.csv")}
    pair = _read_csv(root / "out" / "mcnemar.csv")[0]
    finals = {}
    for name in ("x", "y"):
        st, _ = study_mod.load(name, storage)
        final = json.loads((Path(st.user_attrs[FINAL_ATTR]["dir"]) / "report.json").read_text())
        finals[name] = final
        want = f1_score(final["test_labels"], final["test_predictions"], average="macro")
        assert _num(rows[name]["test_f1"]) == pytest.approx(100 * want, abs=1e-4)
        assert _num(rows[name]["test_f1_ci95_low"]) == pytest.approx(
            100 * final["f1_macro_ci95"][0], abs=1e-4
        )
    y = np.array(finals["x"]["test_labels"])
    rx = np.array(finals["x"]["test_predictions"]) == y
    ry = np.array(finals["y"]["test_predictions"]) == y
    table = np.array([[np.sum(rx & ry), np.sum(rx & ~ry)], [np.sum(~rx & ry), np.sum(~rx & ~ry)]])
    want_p = sm_mcnemar(table, exact=table[0, 1] + table[1, 0] < 25).pvalue
    assert float(pair["p_value"]) == pytest.approx(want_p, rel=1e-5)
    assert "Table III" in report.markdown
