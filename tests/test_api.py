"""The public Python API (clothopt.api, exported by the package) and its README example."""

from __future__ import annotations

import gc
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import clothopt
from clothopt.errors import AlreadyExists, InvalidArgument, NotFound, UserError
from conftest import create_args, make_dataset, run_cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "quickstart.py"
README = ROOT / "README.md"

TINY_SPACE = """
description = "tiny"
sampler = "grid"
epochs = 1
[params]
image_size = [32]
batch_size = [8]
learning_rate = [1e-2, 1e-3]
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPACE)
    return path


# --------------------------------------------------------------------------- the package front


def test_import_clothopt_imports_neither_tensorflow_nor_optuna() -> None:
    code = (
        "import sys, clothopt; clothopt.__version__; clothopt.create_study; "
        "clothopt.errors.NotFound; clothopt.logging.INFO; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'optuna') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True
    )
    assert out.stdout.strip() == "[]"


def test_every_public_name_is_documented_and_is_the_api_function() -> None:
    # importing the submodules of the same stem must not replace the package's functions
    import clothopt.api
    import clothopt.predict
    import clothopt.similar

    names = [n for n in clothopt.__all__ if n != "__version__"]
    assert 8 <= len(names) <= 12
    assert set(names) <= set(clothopt.api.__all__)
    for name in clothopt.api.__all__:
        obj = getattr(clothopt.api, name)
        assert inspect.getdoc(obj), f"{name} has no docstring"
        if name in names:
            assert getattr(clothopt, name) is obj, name
    assert isinstance(clothopt.__version__, str)
    with pytest.raises(AttributeError):
        clothopt.no_such_name  # noqa: B018


# --------------------------------------------------------------------------- end to end


def test_api_study_end_to_end(tmp_path: Path, tiny_space: Path, storage: str) -> None:
    """create (a SearchSpace object) -> optimize -> load -> finalize -> predict -> similar."""
    import optuna

    from clothopt.spaces import load_space

    data = make_dataset(tmp_path / "data")
    study = clothopt.create_study(
        data,
        backbone="mobilenet_025",
        storage=storage,
        space=load_space(str(tiny_space)),
        study_name="api",
        weights="none",
    )
    assert isinstance(study, optuna.Study)
    assert [t.state.name for t in study.trials] == ["WAITING", "WAITING"]  # the grid enqueued
    summary = clothopt.optimize(study)
    assert (summary.ran, summary.complete, summary.failed) == (2, 2, 0)
    again = clothopt.load_study("api", storage)
    assert again.best_value == summary.best_value
    assert clothopt.optimize(again).ran == 0  # the grid is done: nothing runs twice

    report = clothopt.finalize(study, epochs=1, resamples=1000)
    assert report["trial"] == again.best_trial.number
    model = clothopt.load_model(study)
    assert model.classes == ("hat", "pants", "shoes")
    assert model.path == tmp_path / "studies/runs/api/final/model.keras"  # beside the storage
    assert model.threshold is not None  # finalize ships the "not clothing" detector

    files = sorted((data / "test" / "hat").iterdir())
    by_folder = clothopt.predict_images(model, data / "test")
    assert len(by_folder) == 12 and all(p.error is None for p in by_folder)
    from PIL import Image

    array = np.asarray(Image.open(files[0]).convert("RGB"))
    one, from_array = clothopt.predict_images(model.path, [files[0], array], top_k=2)
    assert len(one.top) == 2 and from_array.image == "<array 1>"
    # the same image as a file and as an array: the same answer
    assert [c for c, _ in from_array.top] == [c for c, _ in one.top]
    assert [p for _, p in from_array.top] == pytest.approx([p for _, p in one.top])
    bad = clothopt.predict_images(model, [tmp_path / "missing.jpg", files[1]])
    assert bad[0].error and bad[1].error is None  # one bad file never stops the rest

    built = clothopt.build_index(model, data / "train")
    assert built.out == model.path.with_name("similar.npz") and built.images == 24
    queries = sorted((data / "train" / "hat").iterdir())
    found = clothopt.find_similar(built.out, data / "train" / "hat", k=3)
    assert [f.image for f in found] == [str(q) for q in queries]
    accepted = [f for f in found if f.rejected is None]
    assert accepted, "the detector rejected every train image"
    for f in accepted:  # a catalogue image finds itself first
        assert len(f.items) == 3 and f.items[0].relpath == f"hat/{Path(f.image).name}"
        assert f.items[0].score == pytest.approx(1.0, abs=1e-4)
        assert f.items[0].score >= f.items[1].score >= f.items[2].score
    for f in found:
        assert (f.items == []) == (f.rejected is not None)

    removed = clothopt.delete_study("api", storage)
    assert removed[0] == "study 'api' and its 2 trial(s)"
    with pytest.raises(UserError):
        clothopt.load_study("api", storage)


def test_api_records_the_config_the_cli_records(
    tmp_path: Path, tiny_space: Path, storage: str
) -> None:
    from clothopt import study as study_mod

    data = make_dataset(tmp_path / "data")
    code, _, err = run_cli(create_args(tiny_space, data, "by-cli", storage, "--seed", "3"))
    assert code == 0, err
    clothopt.create_study(
        str(data),
        backbone=["mobilenet_025"],
        storage=storage,
        space=tiny_space,
        study_name="by-api",
        weights="none",
        seed=3,
    )
    configs = [study_mod.load(n, storage)[1].to_dict() for n in ("by-cli", "by-api")]
    commands = [c.pop("command") for c in configs]
    for c in configs:
        del c["name"]
    assert configs[0] == configs[1]
    assert commands[1].startswith("clothopt.create_study(data=") and "seed=3" in commands[1]
    # what the CLI will pass when it calls the API: its own command line
    line = "clothopt study create --backbone mobilenet_025"
    clothopt.create_study(
        data, backbone="mobilenet_025", storage=storage, study_name="cli", command=line
    )
    assert study_mod.load("cli", storage)[1].command == line


def test_plain_optuna_study_with_the_objective(tmp_path: Path, tiny_space: Path) -> None:
    import optuna

    data = make_dataset(tmp_path / "data")
    objective = clothopt.create_objective(
        data=data, backbone="mobilenet_025", space=tiny_space, weights="none", epochs=1
    )
    cache = Path(objective.config.cache_dir)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    study.optimize(objective, n_trials=2)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.best_value == study.best_trial.user_attrs["val_f1_macro"]
    assert cache.is_dir() and any(cache.iterdir())  # features cached in a temporary folder
    del objective
    gc.collect()
    assert not cache.parent.exists()  # ... removed with the objective


def test_objective_of_a_clothopt_study_under_plain_optimize(
    tmp_path: Path, tiny_space: Path, storage: str
) -> None:
    data = make_dataset(tmp_path / "data")
    study = clothopt.create_study(
        data, backbone="mobilenet_025", storage=storage, space=tiny_space, weights="none"
    )
    study.optimize(clothopt.create_objective(study), n_trials=1)  # Optuna's own loop
    assert study.trials[0].state.name == "COMPLETE"  # it ran the first enqueued grid point
    with pytest.raises(InvalidArgument, match="own settings"):
        clothopt.create_objective(study, backbone="xception")


# --------------------------------------------------------------------------- objects and errors


def test_sampler_and_storage_objects(tmp_path: Path, tiny_space: Path, storage: str) -> None:
    import optuna

    from clothopt.engine import open_storage

    data = make_dataset(tmp_path / "data")
    tpe = optuna.samplers.TPESampler(seed=1)
    study = clothopt.create_study(
        data,
        backbone="mobilenet_025",
        storage=open_storage(storage, create=True),  # an RDBStorage: its URL is used
        space=tiny_space,
        sampler=tpe,
        pruner=optuna.pruners.MedianPruner(),
        n_trials=3,
        study_name="objects",
        weights="none",
    )
    assert study.sampler is tpe
    assert (study.user_attrs["sampler"], study.trials) == ("tpe", [])  # no grid enqueued
    loaded = clothopt.load_study("objects", storage)  # another process: rebuilt from the record
    assert isinstance(loaded.sampler, optuna.samplers.TPESampler) and loaded.sampler is not tpe
    assert isinstance(loaded.pruner, optuna.pruners.MedianPruner)
    same = clothopt.create_study(
        data, backbone="x", storage=storage, study_name="objects", load_if_exists=True
    )
    assert same.study_name == "objects" and same.user_attrs["backbone"] == "mobilenet_025"
    with pytest.raises((AlreadyExists, UserError), match="already exists"):
        clothopt.create_study(
            data, backbone="mobilenet_025", storage=storage, space=tiny_space,
            study_name="objects", weights="none",
        )  # fmt: skip

    for sampler in (optuna.samplers.GridSampler({"a": [1]}), optuna.samplers.NSGAIISampler()):
        with pytest.raises(InvalidArgument, match="records its sampler"):
            clothopt.create_study(data, backbone="mobilenet_025", storage=storage, sampler=sampler)
    with pytest.raises(InvalidArgument, match="RDBStorage"):
        clothopt.create_study(
            data, backbone="mobilenet_025", storage=optuna.storages.InMemoryStorage()
        )
    plain = optuna.create_study(storage=storage, study_name="plain")
    with pytest.raises(InvalidArgument, match="not created by clothopt"):
        clothopt.optimize(plain)
    with pytest.raises(InvalidArgument):
        clothopt.optimize(study, n_trials=0)
    with pytest.raises(NotFound):
        clothopt.load_study("objects", f"sqlite:///{tmp_path / 'nowhere.db'}")
    with pytest.raises(NotFound, match="no final model"):
        clothopt.load_model(study)
    assert list(tmp_path.glob("*.db")) == []  # a failed load made no storage


def test_bad_images_and_arguments(tmp_path: Path) -> None:
    from conftest import save_tiny_model

    path = save_tiny_model(tmp_path / "final", ["hat", "pants", "shoes"])
    model = clothopt.load_model(path)
    with pytest.raises(InvalidArgument, match="shape"):
        clothopt.predict_images(model, np.zeros((8, 8), np.uint8))
    with pytest.raises(InvalidArgument, match="uint8"):
        clothopt.predict_images(model, [np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(InvalidArgument, match="top_k"):
        clothopt.predict_images(model, [np.zeros((8, 8, 3), np.uint8)], top_k=0)
    with pytest.raises(InvalidArgument, match="no images"):
        clothopt.predict_images(model, [tmp_path / "final"])  # a folder without images
    with pytest.raises(NotFound):
        clothopt.load_model(tmp_path / "absent.keras")
    [pred] = clothopt.predict_images(model, np.full((40, 30, 3), 200, np.uint8), top_k=5)
    probabilities = [p for _, p in pred.top]
    assert sorted(c for c, _ in pred.top) == sorted(model.classes)  # top_k capped at 3 classes
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)


# --------------------------------------------------------------------------- README and example


def _python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], re.S)


def test_readme_shows_the_example_verbatim() -> None:
    body = EXAMPLE.read_text().split('"""', 2)[2].strip()  # the file after its docstring
    assert _python_blocks("Python API")[0].strip() == body
    text = README.read_text()
    assert text.index("## Quick start") < text.index("## Python API") < text.index("## Commands")


def test_example_runs_on_a_tiny_data_set(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    args = [sys.executable, str(EXAMPLE), str(data), str(tmp_path / "studies"), "none"]
    out = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("ran 3 trials; best ")
    assert re.fullmatch(r"test macro-F1 [01]\.\d{3} \(95% CI [01]\.\d{3}-[01]\.\d{3}\)", lines[1])
    assert len(lines) == 5 and all(": " in line for line in lines[2:])
    assert (tmp_path / "studies/runs/quickstart/final/model.keras").is_file()


def test_readme_plain_optuna_block_runs(tmp_path: Path) -> None:
    block = _python_blocks("Python API")[1]
    assert block.count('backbone="mobilenet_025"') == 1
    # random weights for speed (the README's block uses ImageNet's, a download)
    code = block.replace('backbone="mobilenet_025"', 'backbone="mobilenet_025", weights="none"')
    make_dataset(tmp_path / "data")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "'image_size': " in out.stdout  # the best parameters printed


# --------------------------------------------------------------------------- real weights


@pytest.mark.slow
def test_api_with_real_mobilenet(tmp_path: Path, real_subset: Path, real_weights: Path) -> None:
    from clothopt.spaces import SearchSpace

    study = clothopt.create_study(
        real_subset,
        backbone="mobilenet_025",
        storage=f"sqlite:///{tmp_path / 'studies.db'}",
        # a SearchSpace built from a dict: the 96 px points that learn on 120 train images
        space=SearchSpace.from_dict(
            {"params": {"image_size": [96], "batch_size": [4, 8], "learning_rate": [0.01]}},
            name="small",
        ),
        weights=real_weights,
    )
    summary = clothopt.optimize(study)
    assert (summary.complete, summary.failed) == (2, 0)
    report = clothopt.finalize(study, resamples=1000)  # the paper's 5 epochs
    assert report["test"]["f1_macro"] > 0.3  # pretrained features learn something (chance 0.1)
    model = clothopt.load_model(study)
    preds = clothopt.predict_images(model, real_subset / "test")
    # the API's predictions are the reported ones: the same saved model, the same images
    top1 = [model.classes.index(p.top[0][0]) for p in preds]
    assert top1 == report["test_predictions"]
