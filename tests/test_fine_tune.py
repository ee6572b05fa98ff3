"""clothopt.final.fine_tune: `study finalize --fine-tune N` trains the base's top N layers end
to end and exports exactly the tuned network (tiny data, the pretrained MobileNet at 32 px:
random weights give features of ~1e-17, whose gradients Adam's epsilon rounds to nothing)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from clothopt import study as study_mod
from clothopt.final.fine_tune import base_of
from clothopt.final.store import load_final
from clothopt.model.backbones import get_backbone
from clothopt.model.compose import compose
from clothopt.reports.finalized import format_report
from conftest import REAL_WEIGHTS, make_tiny_study, run_cli

SPACE = """
sampler = "grid"
epochs = 1
[params]
image_size = [32]
batch_size = [4]
learning_rate = [0.01]
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not REAL_WEIGHTS.is_file():
        pytest.skip("pretrained MobileNet weights not at ../shared/weights")
    root = tmp_path_factory.mktemp("fine_tune")
    return {"storage": make_tiny_study(root, str(REAL_WEIGHTS), SPACE)}


@pytest.fixture(scope="module")
def tuned(study: dict[str, Any]) -> dict[str, Any]:
    argv = ["study", "finalize", "tiny", "--storage", study["storage"], "--quiet"]
    argv += ["--fine-tune", "3", "--fine-tune-epochs", "2", "--fine-tune-lr", "1e-3"]
    code, out, err = run_cli(argv)
    assert code == 0, err
    report, folder = load_final("tiny", study["storage"])
    return {"report": report, "folder": folder, "out": out}


def test_only_the_top_layers_move_and_the_export_carries_them(
    study: dict[str, Any], tuned: dict[str, Any]
) -> None:
    saved = keras.saving.load_model(tuned["folder"] / "model.keras", safe_mode=True)
    fresh = base_of(compose(get_backbone("mobilenet_025"), 32, str(REAL_WEIGHTS)))
    weighted = [layer for layer in fresh.layers if layer.weights]
    top = [
        layer.name
        for layer in weighted[-3:]
        if not isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert top, "the top 3 weighted layers are not all BatchNormalization"
    base = base_of(saved)
    for layer in weighted:
        got, want = base.get_layer(layer.name).get_weights(), layer.get_weights()
        moved = any(not np.array_equal(g, w) for g, w in zip(got, want, strict=True))
        assert moved == (layer.name in top), layer.name
    tuned_params = sum(w.size for name in top for w in fresh.get_layer(name).get_weights())
    head_params = saved.get_layer("logits").count_params()  # the paper's head: logits only
    assert tuned["report"]["trainable_params"] == tuned_params + head_params


def test_the_saved_model_answers_as_the_tuned_training_model(tuned: dict[str, Any]) -> None:
    report = tuned["report"]
    agree = report["cached_path_agreement"]
    assert agree["reference"] == "fine-tuned training model"
    assert agree["agree"] == agree["of"] == report["test_images"]
    ft = report["fine_tune"]
    assert (ft["layers"], ft["epochs"], ft["learning_rate"]) == (3, 2, 1e-3)
    assert len(ft["validation_f1_per_epoch"]) == len(ft["loss_per_epoch"]) == 2
    assert all(np.isfinite(ft["loss_per_epoch"])) and ft["train_seconds"] > 0
    assert "fine-tuned: top 3 base layers, 2 epochs" in tuned["out"]
    n = report["test_images"]
    assert f"fine-tuned training model on {n}/{n} test images" in format_report(report)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fine-tune", "100000"], "--fine-tune must be between 1 and"),
        (["--fine-tune", "2", "--fine-tune-lr", "1.5"], "--fine-tune-lr: must be in (0, 1)"),
        (["--fine-tune", "2", "--fine-tune-epochs", "5000"], "between 1 and 1000"),
    ],
)
def test_fine_tune_mistakes_are_one_line_errors_and_keep_the_result(
    study: dict[str, Any], tuned: dict[str, Any], extra: list[str], message: str
) -> None:
    before = (tuned["folder"] / "report.json").read_bytes()
    argv = ["study", "finalize", "tiny", "--storage", study["storage"], "--quiet"]
    code, _, err = run_cli([*argv, *extra])
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert (tuned["folder"] / "report.json").read_bytes() == before


def test_a_trial_of_concatenated_sizes_is_refused(study: dict[str, Any]) -> None:
    st, _ = study_mod.load("tiny", study["storage"])
    params = {"image_sizes": "32+48", "batch_size": 4, "learning_rate": 0.01}
    dists = st.trials[0].distributions | {"image_sizes": CategoricalDistribution(["32+48"])}
    dists.pop("image_size", None)
    st.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.0))
    number = st.trials[-1].number
    argv = ["study", "finalize", "tiny", "--storage", study["storage"], "--quiet"]
    argv += ["--trial", str(number)]
    code, _, err = run_cli([*argv, "--fine-tune", "2"])
    assert code == 2 and "--fine-tune tunes one base" in err and "32+48 px" in err, err
