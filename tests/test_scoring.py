"""report.json's ``head`` section and its line in the terminal report."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clothopt.final.scoring import head_section
from clothopt.reports.finalized import _head_text
from clothopt.trial_spec import TrialSpec

WIDE: dict[str, Any] = {
    "image_sizes": "32+48",
    "batch_size": 16,
    "learning_rate": 0.01,
    "hidden_layers": 1,
    "hidden_units": 256,
    "flip": True,
    "tta": True,
}


class _Study:
    backbone, seed, epochs = "mobilenet_025", 0, 3


@given(views=st.integers(0, 8), flip=st.booleans(), tta=st.booleans())
def test_head_section_holds_every_feature_setting(views: int, flip: bool, tta: bool) -> None:
    spec = TrialSpec.of(WIDE | {"aug_views": views, "flip": flip, "tta": tta}, _Study())
    head = head_section(spec, 0.5 if tta else None)
    assert head["aug_views"] == views and isinstance(head["aug_views"], int)
    assert head["flip"] is flip and head["tta"] is tta and head["image_sizes"] == [32, 48]
    assert head["final_validation_f1_macro_tta"] == (0.5 if tta else None)
    # the training settings come from the head's parameters
    assert head["hidden_units"] == 256 and head["epochs"] == 3


def test_a_trial_without_aug_views_reports_none() -> None:
    assert head_section(TrialSpec.of(WIDE, _Study()), None)["aug_views"] == 0


@pytest.mark.parametrize(
    ("views", "shown"),
    [(0, None), (1, "1 augmentation view"), (4, "4 augmentation views")],
)
def test_the_head_line_names_the_augmentation_views(views: int, shown: str | None) -> None:
    line = _head_text(head_section(TrialSpec.of(WIDE | {"aug_views": views}, _Study()), 0.5))
    assert line.endswith("; flip, tta" + (f", {shown}" if shown else ""))
    assert "augmentation" in line if views else "augmentation" not in line
