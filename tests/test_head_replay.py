"""benchmarks.head_replay: a finished study's heads trained again give the F1 it recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.head_replay import main as replay

from clothopt.cli import main
from conftest import create_args

# a wide-like space: every trial its own continuous rates, one shared head shape
SPACE = """sampler = "random"
n_trials = 4
epochs = 2
[params]
image_size = [32]
batch_size = [8]
learning_rate = { low = 1e-3, high = 1e-2, log = true }
hidden_layers = [1]
hidden_units = [16]
dropout = { low = 0.1, high = 0.5 }
weight_decay = { low = 1e-5, high = 1e-2, log = true }
label_smoothing = { low = 0.01, high = 0.2 }
optimizer = ["adamw"]
"""


def test_replay_trains_each_trial_to_its_recorded_f1(
    tiny_data: Path, storage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "wide-like.toml"
    space.write_text(SPACE)
    assert main(create_args(space, tiny_data, "w", storage)) == 0
    assert main(["study", "optimize", "w", "--storage", storage, "--quiet"]) == 0
    capsys.readouterr()
    assert replay(["--storage", storage, "--study", "w"]) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith("trial ") for line in out.splitlines()) == 4
    assert "4 trials of w: head seconds median" in out
    assert "validation F1 as recorded: 4/4" in out
