"""The study's note in optuna-dashboard: what the study is, in Markdown."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from clothopt.dashboard.artifacts import METRIC_NAME, REPORT_NAME
from clothopt.reports.render import markdown_table

if TYPE_CHECKING:
    import optuna

    from clothopt.config import StudyConfig

__all__ = [
    "describe_study",
    "study_note",
]


def _cell(value: Any) -> str:
    """A value as inline code in a Markdown table cell (the renderer escapes its pipes)."""
    text = str(value).replace("\n", " ")
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if text else "—"


def _table(header: tuple[str, str], rows: Sequence[tuple[str, Any]]) -> list[str]:
    cells = [{header[0]: key, header[1]: _cell(value)} for key, value in rows]
    return markdown_table(cells, header).splitlines()


def _fenced(text: str, lang: str = "") -> list[str]:
    # a fence longer than any run of backticks in the text, so the text cannot close it
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{lang}", text, fence]


def study_note(config: StudyConfig) -> str:
    """The study's note: what it searches, on what, with what, and how it was made."""
    space = config.space
    training = (
        f"cached features (cache {config.cache_dir})"
        if config.use_cache
        else "end to end (every epoch through the frozen base)"
    )
    lines = [
        f"# {config.name}",
        "",
        f"clothopt study: backbone **{config.backbone}**, search space **{space.name}**, "
        f"sampler **{config.sampler}**, {config.budget()} trials. Each trial trains the "
        "classification head and returns the validation macro-F1 (maximized); every trial's "
        f"figures are in its user attributes and its per-class report is the artifact "
        f"`{REPORT_NAME}`.",
        "",
        *_table(
            ("Study", "Value"),
            [
                ("Backbone", config.backbone),
                ("Weights", config.weights),
                ("Data set", config.data),
                ("Data fingerprint", config.data_fingerprint),
                (f"Classes ({len(config.classes)})", ", ".join(config.classes)),
                ("Training", training),
                ("Epochs per trial", config.epochs),
                ("Seed", config.seed),
                ("Resize", config.resize),
                ("Pruner", config.pruner),
                ("Retries of a dead worker's trial", config.max_retries),
            ],
        ),
        "",
        f"## Search space: {space.name}",
        "",
    ]
    if space.description:
        lines += [space.description, ""]
    lines += _table(
        ("Parameter", "Values"),
        [(name, p.describe()) for name, p in space.params.items()],
    )
    lines += ["", f"## Sampler: {config.sampler}", ""]
    args = sorted(config.sampler_args.items())
    lines += _table(("Argument", "Value"), args) if args else ["(no arguments)"]
    lines += ["", "## Versions", ""]
    lines += _table(("Package", "Version"), sorted(config.versions.items()))
    lines += ["", "## Created with", ""]
    lines += _fenced(config.command, "sh") if config.command else ["(the Python API)"]
    return "\n".join(lines) + "\n"


def describe_study(study: optuna.Study, config: StudyConfig) -> None:
    """What optuna-dashboard shows about the study: :func:`study_note` and its metric's name."""
    import warnings

    from optuna_dashboard import save_note

    save_note(study, study_note(config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # set_metric_names is flagged experimental
        study.set_metric_names([METRIC_NAME])  # plots say "val_f1_macro", not "Objective 0"
