"""``make bench``: how near clothopt's search sits to the floor of one forward pass per image.

Runs each section in its own fresh process (so the end-to-end and cached searches start alike
and the memory figure is one grid's own peak), then writes ``bench.json`` and ``bench.md`` to
``--out`` and prints the figures. Each section also records how many CPU cores other processes
used while it ran, so a figure taken on a loaded machine says so.

    python -m benchmarks.bench --data DIR --weights FILE [--out bench-results] [--quick]

(run from the repository root, as ``make bench`` does)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks.measure import (
    F1_TOLERANCE,
    FEATURE_TOLERANCE,
    MIN_SPEEDUP,
    OVERHEAD_GOAL,
    SEARCH_GOAL,
    SECTIONS,
    Settings,
    cpu_info,
    run_section,
)
from clothopt._io import atomic_write_json, atomic_write_text
from clothopt.reports.render import format_table, markdown_table

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["QUICK", "build_settings", "goal_rows", "main", "render_markdown", "run_all"]

LOADED_CORES = 0.25  # other processes using more than this many cores: the figure is noisy

# fmt: off
# A smoke run of every section in a few minutes (figures are not meaningful at this scale)
QUICK: dict[str, Any] = {
    "extract_images": 64, "rounds": 2, "option_images": 64, "option_rounds": 1,
    "option_batches": [16, 32], "extract_sizes": [300], "batch_sizes_px": [300],
    "batch_images": 32, "option_threads": [1, 2], "slow_variant_seconds": 10.0,
    "train_images": 60, "val_images": 30, "search_batches": [32], "search_lrs": [1e-3, 1e-4],
    "wide_trials": 2, "memory_train_images": 30, "memory_val_images": 20,
    "repeats_runs": 1, "repeats_train_rows": 300, "repeats_wide_epochs": 2,
}

# Settings a flag may override: (field, type, help)
OVERRIDES = (
    ("backbone", str, None), ("image_size", int, None), ("extract_batch", int, None),
    ("threads", int, "decode threads (default: clothopt's)"),
    ("extract_images", int, "images for the extraction figures"),
    ("train_images", int, "training images for the search (0: all)"),
    ("val_images", int, "validation images for the search (0: all)"),
    ("memory_train_images", int, None), ("memory_val_images", int, None),
)

# The figures table, one row per entry: (summary key, measurement, figure, goal, met key).
# "a.b" reads summary["a"] merged with its "b" (one row per item when that is a list), "a.*"
# one row per entry of summary["a"] (its key as {name}). The templates are filled with it; a
# figure is one template or several, and a template naming a missing figure is left out.
Goal = tuple[str, str, str | tuple[str, ...], str, str | None]
GOALS: tuple[Goal, ...] = (
    ("search", "Search cost, {trials} trials at {image_size} px ({train_images} train + "
     "{val_images} val images)",
     "end-to-end {end_to_end_seconds:.1f} s vs cached {cached_seconds:.1f} s = {ratio}x",
     ">= {goal:g}x", "met"),
    ("search", "Search cost per trial after the first (amortized)",
     "{end_to_end_trial_seconds:.2f} s vs {cached_trial_seconds_after_first:.2f} s = "
     "{amortized_ratio}x", "-", None),
    ("search", "Same F1 on both paths", "max |dF1| = {max_f1_diff}", "0", None),
    ("extraction.sizes", "Extraction pipeline vs bare forward ({image_size} px, batch "
     "{batch_size}, {decode_threads} decode threads)",
     ("{pipeline_img_s} vs {forward_img_s} img/s = {pipeline_vs_forward:.0%}",
      " (2-core CPU bound {cpu_bound:.0%})"), ">= {goal:.0%}", "met"),
    ("extraction.shared_decode", "Extraction of {sizes} px in one pass (each image decoded "
     "once) vs their bare forward passes", "{seconds} s vs {forward_seconds} s = "
     "{pipeline_vs_forward:.0%} ({speedup_vs_size_by_size}x size by size)", ">= {goal:.0%}",
     "met"),
    *((f"head.{name}", f"Head training per trial, reused HeadTrainer, {what}, "
       "{params[epochs]} epochs, {train_rows} rows x {feature_dim}",
       "median {seconds_per_trial:.3f} s, max {seconds_max:.3f} s over {trials} trials (first "
       "with compile {seconds_first_with_compile:.2f} s)", "<= {goal_seconds:g} s", "met")
      for name, what in (("paper", "paper head"), ("wide", "wide heads (1 x 512, AdamW, cosine, "
                         "rates drawn per trial, 2 sizes, mirrored rows)"))),
    ("search_trial", "Per trial outside training in the cached search (objective, storage, "
     "attributes)", "{outside_training_seconds:.3f} s (head training {train_seconds:.3f} s)",
     "<= {goal:g} s", "met"),
    ("overhead", "Search overhead per trial (storage + sampling, {storage}, {trials} trials, "
     "no training)", "{ms_per_trial:.1f} ms", "<= {goal_ms:g} ms", "met"),
    ("repeats.heads", "Stacked fit of {members} members (seeds) vs one fit, {what}, {epochs} "
     "epochs, {train_rows} rows x {feature_dim} (synthetic)",
     "median {stacked_seconds:.2f} s vs {solo_seconds:.2f} s = {ratio:.2f}x over {runs} "
     "alternating runs (CPU {cpu_ratio:.2f}x; max |dw| vs alone {max_weight_diff:.0e})",
     "<= {goal:g}x", "met"),
    ("memory", "Memory, {trials}-trial grid (cached path)", "peak {peak_rss_mb:.0f} MiB; after "
     "trials: first {rss_first_mb:.0f}, last {rss_last_mb:.0f}, max {rss_max_mb:.0f} MiB; "
     "{slope_mb_per_trial:+.2f} MiB/trial within a size", "flat", "flat"),
)
# printed on the terminal too (bench.md has their own tables)
TERMINAL_GOALS: tuple[Goal, ...] = (
    ("options.*", "Option {name} (against the defaults)",
     "{speedup}x, within tolerance: {within_tolerance}", "-", "recommended"),
    ("batch_by_size", "Extraction batch size, grid seconds per 1000 images",
     "{grid_seconds_per_1000_images}; default {default}, best {best}", "-", "recommended"),
)
# fmt: on
FIGURES = ("Measurement", "Figure", "Goal", "Met")


# --------------------------------------------------------------------------- running


def _cpu_seconds(in_process: bool) -> tuple[float | None, float]:
    """CPU seconds all processes have used since boot (Linux /proc/stat, None elsewhere), and
    those of this process (``in_process``) or of its finished children."""
    ru = resource.getrusage(resource.RUSAGE_SELF if in_process else resource.RUSAGE_CHILDREN)
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None, ru.ru_utime + ru.ru_stime
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), ru.ru_utime + ru.ru_stime


def _run_section(name: str, settings: Settings, in_process: bool) -> dict[str, Any]:
    """One section, in a fresh process unless ``in_process`` (the smoke test: figures then
    share one process's state); its result plus what else ran on the machine meanwhile."""
    work = Path(settings.work)
    settings_file, out_file = work / "settings.json", work / f"{name}.json"
    cmd = [sys.executable, "-m", "benchmarks.bench", "--section", name]
    cmd += ["--settings-file", str(settings_file), "--section-out", str(out_file)]
    (busy0, own0), t0 = _cpu_seconds(in_process), time.perf_counter()
    if in_process:
        result = run_section(name, settings)
    else:
        env = {"TF_CPP_MIN_LOG_LEVEL": "3", **os.environ}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
        if proc.returncode != 0 or not out_file.is_file():
            result = {"error": f"section {name} failed (exit {proc.returncode})"}
        else:
            result = json.loads(out_file.read_text())
    wall = time.perf_counter() - t0
    busy1, own1 = _cpu_seconds(in_process)
    result["wall_seconds"] = round(wall, 1)
    if busy0 is not None and busy1 is not None:
        other = max(0.0, (busy1 - busy0) - (own1 - own0))
        result["other_cpu_cores"] = round(other / max(wall, 1e-9), 2)
        result["loaded"] = result["other_cpu_cores"] > LOADED_CORES
    return result


def run_all(
    settings: Settings,
    sections: Sequence[str],
    out_dir: Path,
    stem: str = "bench",
    title: str = "clothopt benchmarks",
    in_process: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``sections`` and write ``<out_dir>/<stem>.json`` and ``.md``; returns the results."""
    started = time.time()
    Path(settings.work).mkdir(parents=True, exist_ok=True)
    (Path(settings.work) / "settings.json").write_text(json.dumps(asdict(settings)))
    results: dict[str, Any] = {}
    for name in sections:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        results[name] = _run_section(name, settings, in_process)
        print(f"[bench] {name}: {results[name].get('wall_seconds')} s", file=sys.stderr)
    report = {
        "title": title,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": machine_info(),
        "settings": asdict(settings),
        "sections": results,
        "summary": summarize(results),
        **(extra or {}),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / f"{stem}.json", report)
    atomic_write_text(out_dir / f"{stem}.md", render_markdown(report))
    return report


def machine_info() -> dict[str, Any]:
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = 0.0
    versions = {}
    for dist in ("clothopt", "keras", "tensorflow", "jax", "torch", "optuna", "numpy", "pillow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    flags = {"avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16"} & set(cpu_info("flags").split())
    return {
        "cpu": cpu_info("model name") or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "cpu_flags": sorted(flags),
        "python": platform.python_version(),
        "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "versions": versions,
    }


# --------------------------------------------------------------------------- summary


def _med(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(median(present)) if present else None


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["image_size"], row["batch_size"], row["learning_rate"])


def _pick(d: Mapping[str, Any], keys: str) -> dict[str, Any]:
    return {k: d.get(k) for k in keys.split()}


def _search(e2e: dict[str, Any], cached: dict[str, Any]) -> dict[str, Any]:
    """The end-to-end search against the cached one, trial by trial."""
    rows_e = {_key(r): r for r in e2e["trial_rows"] if r["state"] == "COMPLETE"}
    done = [r for r in cached["trial_rows"] if r["state"] == "COMPLETE"]
    later = sorted(done, key=lambda r: r["number"])[1:]
    per_e, per_c = (
        _med([r["seconds"] for r in rows_e.values()]),
        _med([r["seconds"] for r in later]),
    )
    f1_diffs = [abs(r["val_f1"] - rows_e[_key(r)]["val_f1"]) for r in done if _key(r) in rows_e]
    ratio = e2e["seconds"] / cached["seconds"] if cached["seconds"] else None
    inside = [
        r["seconds"] - r["train_s"] - (r["extract_s"] or 0.0)
        for r in later
        if r["train_s"] is not None
    ]
    search = _pick(cached, "image_size train_images val_images epochs trials") | {
        "end_to_end_seconds": e2e["seconds"],
        "cached_seconds": cached["seconds"],
        "extract_seconds": sum(r["extract_s"] or 0.0 for r in done),
        "ratio": round(ratio, 2) if ratio else None,
        "end_to_end_trial_seconds": per_e,
        "cached_trial_seconds_after_first": per_c,
        "amortized_ratio": round(per_e / per_c, 1) if per_e and per_c else None,
        "max_f1_diff": round(max(f1_diffs), 4) if f1_diffs else None,
        "goal": SEARCH_GOAL,
        "met": bool(ratio and ratio >= SEARCH_GOAL),
        "loaded": bool(e2e.get("loaded") or cached.get("loaded")),
    }
    trial = {
        "train_seconds": _med([r["train_s"] for r in later]),
        "outside_training_seconds": _med(inside),
        "goal": OVERHEAD_GOAL,
        "met": (_med(inside) or 0.0) <= OVERHEAD_GOAL,
        "loaded": bool(cached.get("loaded")),
    }
    return {"search": search, "search_trial": trial}


def summarize(sections: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue asks for, each with its goal where it has one."""
    out: dict[str, Any] = {}
    e2e, cached = sections.get("search_e2e", {}), sections.get("search_cached", {})
    if "trial_rows" in e2e and "trial_rows" in cached:
        out |= _search(e2e, cached)
    if "paper" in (head := sections.get("head", {})):
        out["head"] = _pick(head, "paper wide train_images image_size") | {
            "loaded": bool(head.get("loaded"))
        }
    if "sizes" in (ext := sections.get("extraction", {})):
        keep = "image_size forward_img_s pipeline_img_s decode_only_img_s pipeline_vs_forward "
        keep += "cpu_bound pipeline_vs_bound met"
        out["extraction"] = _pick(ext, "batch_size decode_threads images goal shared_decode") | {
            "sizes": [_pick(r, keep) for r in ext["sizes"]],
            "loaded": bool(ext.get("loaded")),
        }
    if "ms_per_trial" in (ovh := sections.get("overhead", {})):
        out["overhead"] = _pick(ovh, "ms_per_trial trials storage") | {
            "goal_ms": 1000 * OVERHEAD_GOAL,
            "met": ovh["ms_per_trial"] <= 1000 * OVERHEAD_GOAL,
            "loaded": bool(ovh.get("loaded")),
        }
    if "peak_rss_mb" in (mem := sections.get("memory", {})):
        out["memory"] = _pick(
            mem, "trials peak_rss_mb rss_first_mb rss_last_mb rss_max_mb slope_mb_per_trial flat"
        )
    if "variants" in (opt := sections.get("options", {})):
        out["options"] = {
            f"{v['option']}={v['value']}": _pick(v, "speedup within_tolerance recommended")
            for v in opt["variants"]
            if v["option"] != "baseline"
        }
        out["options_baseline"] = opt["baseline"]
        if bbs := opt.get("batch_by_size"):
            keep = "grid_seconds_per_1000_images default best best_speedup recommended"
            out["batch_by_size"] = _pick(bbs, keep)
    if "paper" in (rep := sections.get("repeats", {})):
        names = [n for n in ("paper", "wide", "wide_fused_adam", "wide_no_dropout") if n in rep]
        out["repeats"] = _pick(rep, "members runs train_rows feature_dim load_before") | {
            "heads": [{"name": n} | rep[n] for n in names],
            "loaded": bool(rep.get("loaded")),
        }
    devices = [r["device"] for r in sections.values() if r.get("device")]
    out["device"] = devices[0] if devices else None
    out["gpu"] = bool(devices) and devices[0] != "cpu"
    out["loaded_sections"] = [n for n, r in sections.items() if r.get("loaded")]
    out["failed_sections"] = [n for n, r in sections.items() if "error" in r]
    return out


# --------------------------------------------------------------------------- output


def _yes(flag: Any) -> str:
    return "yes" if flag else "**no**"


def _fill(template: str, figures: Mapping[str, Any]) -> str:
    with contextlib.suppress(KeyError, IndexError, TypeError, ValueError):
        return template.format_map(figures)
    return ""


def goal_rows(summary: dict[str, Any], table: Sequence[tuple[Any, ...]] = GOALS) -> list[dict]:
    """The rows of ``table`` (:data:`GOALS`) that ``summary`` has figures for."""
    rows = []
    for where, what, figure, goal, met in table:
        top, _, part = where.partition(".")
        if not (found := summary.get(top)):
            continue
        if part == "*":
            items = [{"name": k, **v} for k, v in found.items()]
        elif part:
            inner = found.get(part) or []
            items = [found | r for r in (inner if isinstance(inner, list) else [inner])]
        else:
            items = [found]
        for f in items:
            # a list of numbers reads 300/400/500
            f = {k: "/".join(map(str, v)) if _numbers(v) else v for k, v in f.items()}
            text = "".join(_fill(t, f) for t in ((figure,) if isinstance(figure, str) else figure))
            text += " (loaded)" if f.get("loaded") else ""
            cells = (_fill(what, f), text, _fill(goal, f), _yes(f.get(met)) if met else "-")
            rows.append(dict(zip(FIGURES, cells, strict=True)))
    return rows


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, int | float) for x in value)


def _device_line(summary: dict[str, Any]) -> str:
    if summary.get("gpu"):
        return f"GPU {summary['device']}"
    return "CPU only (no GPU found)" if summary.get("device") == "cpu" else "unknown"


# the Markdown tables of the sections: their columns (keys of the rows) and decimals
SEARCH_COLUMNS = "number batch_size learning_rate e2e_seconds seconds extract_s train_s e2e_val_f1"
EXTRACTION_COLUMNS = (
    "image_size forward_img_s forward_img_s_per_round pipeline_img_s pipeline_img_s_per_round "
    "decode_only_img_s pipeline_vs_forward pipeline_vs_forward_per_round forward_cpu_ms_per_image "
    "decode_cpu_ms_per_image cpu_bound same_features"
)
OPTION_COLUMNS = (
    "option value images pipeline_img_s forward_img_s speedup max_abs_diff max_rel_diff"
)
DIGITS = {"val_f1": 4, "e2e_val_f1": 4, "pipeline_vs_forward": 3, "cpu_bound": 3, "speedup": 3}
DIGITS |= dict.fromkeys(("forward_img_s", "pipeline_img_s", "decode_only_img_s"), 1)
DIGITS |= dict.fromkeys(("max_abs_diff", "max_rel_diff"), 4)


def _markdown(rows: Sequence[Mapping[str, Any]], columns: str | Sequence[str]) -> str:
    columns = columns.split() if isinstance(columns, str) else columns
    return markdown_table(rows, columns, DIGITS)


def render_markdown(report: dict[str, Any]) -> str:
    sec, summ, mach = report["sections"], report["summary"], report["machine"]
    flags = ", ".join(mach["cpu_flags"]) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in mach["versions"].items())
    parts = [
        f"# {report['title']}\n\n{report['created']}, {report['seconds']:.0f} s in all. Machine: "
        f"{mach['cpu']}, {mach['cores']} cores, {mach['memory_gib']} GiB; CPU flags {flags}; "
        f"Keras backend {mach['keras_backend']}; {versions}.",
    ]
    if loaded := summ.get("loaded_sections"):
        parts.append(
            f"**Taken under load**: other processes used more than {LOADED_CORES} cores during "
            f"{', '.join(loaded)} (column `other_cpu_cores` below); those figures are noisy."
        )
    if summ.get("failed_sections"):
        parts.append(f"**Failed sections**: {', '.join(summ['failed_sections'])}.")
    if report.get("notes"):
        parts.append("\n".join(f"Note: {n}" for n in report["notes"]))
    parts += [f"Device: {_device_line(summ)}", "## Figures", _markdown(goal_rows(summ), FIGURES)]
    sections = [{"section": n} | r for n, r in sec.items()]
    parts += ["## Sections", _markdown(sections, "section wall_seconds other_cpu_cores")]
    e2e, cached = sec.get("search_e2e", {}), sec.get("search_cached", {})
    if "trial_rows" in e2e and "trial_rows" in cached:
        by_key = {_key(r): r for r in e2e["trial_rows"]}
        trials = [
            r | {f"e2e_{k}": by_key.get(_key(r), {}).get(k) for k in ("seconds", "val_f1")}
            for r in cached["trial_rows"]
        ]
        parts += [
            f"## Search cost: {cached['trials']} trials at {cached['image_size']} px, "
            f"{cached['train_images']} train + {cached['val_images']} validation images, "
            f"{cached['epochs']} epochs",
            "Both paths run through `study.optimize` on SQLite, each in a fresh process. The "
            "end-to-end path (`e2e_`, the paper's) decodes every image and runs the base every "
            "epoch of every trial; the cached path extracts features once (first trial: "
            "`extract_s`) and then trains only the head (`train_s`; extraction batch "
            f"{cached.get('extract_batch')}, {cached.get('decode_threads')} decode threads, as "
            "`clothopt study run` sets them). Seconds and validation macro-F1 per trial:",
            _markdown(trials, SEARCH_COLUMNS + " val_f1"),
        ]
    if "sizes" in (ext := sec.get("extraction", {})):
        parts += [
            "## Feature extraction",
            f"{ext['backbone']}, extraction batch {ext['batch_size']}, {ext['decode_threads']} "
            f"decode threads, {ext['images']} training images, median of {ext['rounds']} "
            "interleaved rounds (`_per_round`: each round's figure). The bare forward pass "
            "(`forward`) runs the same extractor on the same images already decoded in memory "
            "(uint8); the whole extraction (`pipeline`) is `extract_features` (read, decode, "
            "resize, preprocess, forward). On a CPU-only machine decoding and the forward pass "
            "share the cores, so the extraction can reach at most `cpu_bound` = forward CPU time "
            "/ (forward + decode CPU time) of the bare forward rate.",
            _markdown(ext["sizes"], EXTRACTION_COLUMNS),
        ]
    if "variants" in (opt := sec.get("options", {})):
        parts += _options_markdown(opt)
    if "rss_mb" in (mem := sec.get("memory", {})):
        parts += [
            "## Memory",
            f"The `{mem['space']}` grid ({mem['trials']} trials) on the cached path through "
            f"`study.optimize`, {mem['train_images']} train + {mem['val_images']} validation "
            f"images, in a fresh process. Resident MiB after each trial (the `rss_mb` trial "
            f"attribute): {', '.join(f'{x:.0f}' for x in mem['rss_mb'])}. Process peak "
            f"{mem['peak_rss_mb']:.0f} MiB (before the study {mem['rss_before_mb']:.0f} MiB). "
            f"Slope within each image size {mem['slope_mb_per_trial']:+.2f} MiB/trial "
            f"(over all trials {mem['slope_all_mb_per_trial']:+.2f}); rule: {mem['flat_rule']}.",
        ]
    parts.append("Reproduce: `make bench` (or `python -m benchmarks.bench --help`).")
    return "\n\n".join(parts) + "\n"


def _options_markdown(opt: dict[str, Any]) -> list[str]:
    b = opt["baseline"]
    parts = [
        "## Extraction options",
        f"Baseline: clothopt's defaults at {opt['image_size']} px: precision {b['precision']}, "
        f"jit_compile {b['jit_compile']}, extraction batch {b['batch_size']}, "
        f"{b['decode_threads']} decode threads ({opt['device']}). `recommended`: the whole "
        f"extraction is at least {MIN_SPEEDUP:g}x faster than with the defaults and results stay "
        f"within tolerance: features within {FEATURE_TOLERANCE:g} of their largest value (float "
        "rounding) for options that should not change them; for a lower precision, every "
        f"trial's validation F1 (the search-cost trials) within {F1_TOLERANCE} of float32.",
        _markdown(opt["variants"], OPTION_COLUMNS + " max_f1_diff within_tolerance recommended"),
    ]
    if bbs := opt.get("batch_by_size"):
        grid = bbs["grid_seconds_per_1000_images"]
        rows = [{"image_size": r["image_size"], **r["img_s"]} for r in bbs["sizes"]]
        rows = [{str(k): v for k, v in r.items()} for r in [*rows, {"image_size": "grid", **grid}]]
        parts += [
            f"Batch size by image size: bare forward img/s per extraction batch, {bbs['images']} "
            f"images, median of {bbs['rounds']} rounds; the last row, `grid`, is what a grid pays "
            f"(seconds to extract 1000 images at every size). Default {bbs['default']}, best "
            f"{bbs['best']} ({bbs['best_speedup']}x); recommended to change: "
            f"{_yes(bbs['recommended']) if bbs['recommended'] else 'no'}.",
            markdown_table(rows, ["image_size", *map(str, grid)], dict.fromkeys(map(str, grid), 1)),
        ]
    if opt.get("skipped"):
        parts.append("Not measured: " + "; ".join(f"{k}: {v}" for k, v in opt["skipped"].items()))
    return parts


def print_table(report: dict[str, Any]) -> None:
    summary = report["summary"]
    print(f"\ndevice: {_device_line(summary)}\n")
    print(format_table(goal_rows(summary, GOALS + TERMINAL_GOALS), FIGURES))
    if summary.get("loaded_sections"):
        loaded = ", ".join(summary["loaded_sections"])
        print(f"\nunder load (other processes > {LOADED_CORES} cores): {loaded}")
    if summary.get("failed_sections"):
        print("FAILED: " + ", ".join(summary["failed_sections"]))
    for note in report.get("notes", []):
        print(f"note: {note}")


# --------------------------------------------------------------------------- CLI


def build_settings(args: argparse.Namespace, profile: dict[str, Any] | None = None) -> Settings:
    flags = {n: v for n, *_ in OVERRIDES if (v := getattr(args, n, None)) is not None}
    data = str(Path(args.data).absolute())
    return Settings(data=data, weights=args.weights, work=args.work, **((profile or {}) | flags))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default=str(ROOT.parent / "shared/datasets/clothing-dataset-small"))
    p.add_argument("--weights", default="imagenet", help="imagenet, none or a weights file")
    p.add_argument("--out", default="bench-results", help="folder for bench.json and bench.md")
    p.add_argument("--work", help="scratch folder (default: a temporary one, removed after)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run; figures not meaningful")
    p.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS)}")
    for name, kind, text in OVERRIDES:
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=text)
    # internal: one section in this process, for the orchestrator
    for name in ("--section", "--settings-file", "--section-out"):
        p.add_argument(name, help=argparse.SUPPRESS)
    return p


def main(
    argv: Sequence[str] | None = None,
    profile: dict[str, Any] | None = None,
    stem: str = "bench",
    title: str = "clothopt benchmarks",
    extra: dict[str, Any] | None = None,
) -> int:
    args = _parser().parse_args(argv)
    if args.section:  # child process: one section, result to --section-out
        settings = Settings(**json.loads(Path(args.settings_file).read_text()))
        atomic_write_json(args.section_out, run_section(args.section, settings))
        return 0
    sections = args.sections.split(",") if args.sections else list(SECTIONS)
    if unknown := [s for s in sections if s not in SECTIONS]:
        print(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
        return 2
    if not Path(args.data).is_dir():
        print(f"data set not found: {args.data} (pass --data DIR)", file=sys.stderr)
        return 2
    temp = None if args.work else tempfile.mkdtemp(prefix="clothopt-bench-")
    args.work = args.work or temp
    settings = build_settings(args, {**(profile or {}), **(QUICK if args.quick else {})})
    try:
        report = run_all(settings, sections, Path(args.out), stem, title, extra=extra)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    print_table(report)
    print(f"\nwrote {Path(args.out) / (stem + '.json')} and {Path(args.out) / (stem + '.md')}")
    return 1 if report["summary"]["failed_sections"] else 0


if __name__ == "__main__":
    sys.exit(main())
