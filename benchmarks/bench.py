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
from collections.abc import Sequence
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
    PIPELINE_GOAL,
    SEARCH_GOAL,
    SECTIONS,
    Settings,
    cpu_flags,
    run_section,
)
from clothopt._io import atomic_write_json, atomic_write_text
from clothopt.reports.render import format_table, markdown_table

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["QUICK", "build_settings", "main", "render_markdown", "run_all", "summarize"]

FIGURE_COLUMNS = ("Measurement", "Figure", "Goal", "Met")
LOADED_CORES = 0.25  # other processes using more than this many cores: the figure is noisy

# A smoke run of every section in a few minutes (figures are not meaningful at this scale)
QUICK: dict[str, Any] = {
    "extract_images": 64,
    "rounds": 2,
    "option_images": 64,
    "option_rounds": 1,
    "option_batches": [16, 32],
    "extract_sizes": [300],
    "batch_sizes_px": [300],
    "batch_images": 32,
    "option_threads": [1, 2],
    "slow_variant_seconds": 10.0,
    "train_images": 60,
    "val_images": 30,
    "search_batches": [32],
    "search_lrs": [1e-3, 1e-4],
    "memory_train_images": 30,
    "memory_val_images": 20,
}


# --------------------------------------------------------------------------- load meter


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have used since boot (Linux /proc/stat), None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------- running


def _run_child(name: str, settings_file: Path, out_file: Path) -> dict[str, Any]:
    """One section in a fresh process; its result plus what else ran on the machine meanwhile."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench",
        "--section",
        name,
        "--settings-file",
        str(settings_file),
        "--section-out",
        str(out_file),
    ]
    env = {"TF_CPP_MIN_LOG_LEVEL": "3", **os.environ}
    busy0, own0, t0 = _busy_cpu_seconds(), _children_cpu_seconds(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
    wall = time.perf_counter() - t0
    busy1, own1 = _busy_cpu_seconds(), _children_cpu_seconds()
    if proc.returncode != 0 or not out_file.is_file():
        result: dict[str, Any] = {"error": f"section {name} failed (exit {proc.returncode})"}
    else:
        result = json.loads(out_file.read_text())
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
    """Run ``sections`` and write ``<out_dir>/<stem>.json`` and ``.md``; returns the results.

    ``in_process`` runs the sections in this process (the smoke test); figures then share one
    process's state, so ``make bench`` never uses it.
    """
    started = time.time()
    work = Path(settings.work)
    work.mkdir(parents=True, exist_ok=True)
    settings_file = work / "settings.json"
    settings_file.write_text(json.dumps(asdict(settings)))
    results: dict[str, Any] = {}
    for name in sections:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        if in_process:
            t0 = time.perf_counter()
            results[name] = run_section(name, settings)
            results[name]["wall_seconds"] = round(time.perf_counter() - t0, 1)
        else:
            results[name] = _run_child(name, settings_file, work / f"{name}.json")
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
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = 0.0
    versions = {}
    for dist in ("clothopt", "keras", "tensorflow", "jax", "torch", "optuna", "numpy", "pillow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    flags = sorted({"avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16"} & cpu_flags())
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "cpu_flags": flags,
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


def summarize(sections: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue asks for, each with its goal where it has one."""
    out: dict[str, Any] = {}
    e2e, cached = sections.get("search_e2e", {}), sections.get("search_cached", {})
    if "trial_rows" in e2e and "trial_rows" in cached:
        rows_e = {_key(r): r for r in e2e["trial_rows"] if r["state"] == "COMPLETE"}
        rows_c = sorted(
            (r for r in cached["trial_rows"] if r["state"] == "COMPLETE"),
            key=lambda r: r["number"],
        )
        later = rows_c[1:]
        per_e = _med([r["seconds"] for r in rows_e.values()])
        per_c = _med([r["seconds"] for r in later])
        f1_diffs = [
            abs(r["val_f1"] - rows_e[_key(r)]["val_f1"]) for r in rows_c if _key(r) in rows_e
        ]
        ratio = e2e["seconds"] / cached["seconds"] if cached["seconds"] else None
        out["search"] = {
            "image_size": cached["image_size"],
            "train_images": cached["train_images"],
            "val_images": cached["val_images"],
            "epochs": cached["epochs"],
            "trials": cached["trials"],
            "end_to_end_seconds": e2e["seconds"],
            "cached_seconds": cached["seconds"],
            "extract_seconds": sum(r["extract_s"] or 0.0 for r in rows_c),
            "ratio": round(ratio, 2) if ratio else None,
            "end_to_end_trial_seconds": per_e,
            "cached_trial_seconds_after_first": per_c,
            "amortized_ratio": round(per_e / per_c, 1) if per_e and per_c else None,
            "max_f1_diff": round(max(f1_diffs), 4) if f1_diffs else None,
            "goal": SEARCH_GOAL,
            "met": bool(ratio and ratio >= SEARCH_GOAL),
            "loaded": bool(e2e.get("loaded") or cached.get("loaded")),
        }
        inside = [
            r["seconds"] - r["train_s"] - (r["extract_s"] or 0.0)
            for r in later
            if r["train_s"] is not None
        ]
        out["search_trial"] = {
            "train_seconds": _med([r["train_s"] for r in later]),
            "outside_training_seconds": _med(inside),
            "goal": OVERHEAD_GOAL,
            "met": (_med(inside) or 0.0) <= OVERHEAD_GOAL,
            "loaded": bool(cached.get("loaded")),
        }
    if "paper" in (head := sections.get("head", {})):
        out["head"] = {k: head[k] for k in ("paper", "wide", "train_images", "image_size")} | {
            "loaded": bool(head.get("loaded"))
        }
    ext = sections.get("extraction", {})
    if "sizes" in ext:
        keep = (
            "image_size",
            "forward_img_s",
            "pipeline_img_s",
            "decode_only_img_s",
            "pipeline_vs_forward",
            "cpu_bound",
            "pipeline_vs_bound",
        )
        out["extraction"] = {
            "batch_size": ext["batch_size"],
            "decode_threads": ext["decode_threads"],
            "images": ext["images"],
            "goal": PIPELINE_GOAL,
            "sizes": [
                {k: r.get(k) for k in keep} | {"met": r["pipeline_vs_forward"] >= PIPELINE_GOAL}
                for r in ext["sizes"]
            ],
            "shared_decode": ext.get("shared_decode"),
            "loaded": bool(ext.get("loaded")),
        }
    ovh = sections.get("overhead", {})
    if "ms_per_trial" in ovh:
        out["overhead"] = {
            "ms_per_trial": ovh["ms_per_trial"],
            "goal_ms": 1000 * OVERHEAD_GOAL,
            "met": ovh["ms_per_trial"] <= 1000 * OVERHEAD_GOAL,
            "trials": ovh["trials"],
            "storage": ovh["storage"],
            "loaded": bool(ovh.get("loaded")),
        }
    mem = sections.get("memory", {})
    if "peak_rss_mb" in mem:
        out["memory"] = {
            k: mem[k]
            for k in (
                "trials",
                "peak_rss_mb",
                "rss_first_mb",
                "rss_last_mb",
                "rss_max_mb",
                "slope_mb_per_trial",
                "flat",
            )
        }
    opt = sections.get("options", {})
    if "variants" in opt:
        out["options"] = {
            f"{v['option']}={v['value']}": {
                "speedup": v["speedup"],
                "within_tolerance": v.get("within_tolerance"),
                "recommended": v["recommended"],
            }
            for v in opt["variants"]
            if v["option"] != "baseline"
        }
        out["options_baseline"] = opt["baseline"]
        if bbs := opt.get("batch_by_size"):
            out["batch_by_size"] = {
                k: bbs[k]
                for k in (
                    "grid_seconds_per_1000_images",
                    "default",
                    "best",
                    "best_speedup",
                    "recommended",
                )
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


def _load_note(flag: Any) -> str:
    return " (loaded)" if flag else ""


def _goal_row(
    what: str, figure: str, goal: str, met: Any, loaded: Any
) -> tuple[str, str, str, str]:
    return (what, f"{figure}{_load_note(loaded)}", goal, _yes(met))


def goal_rows(summary: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measurement, figure, goal, met) for the table printed and written to bench.md."""
    rows = []
    if s := summary.get("search"):
        rows.append(
            (
                f"Search cost, {s['trials']} trials at {s['image_size']} px "
                f"({s['train_images']} train + {s['val_images']} val images)",
                f"end-to-end {s['end_to_end_seconds']:.1f} s vs cached {s['cached_seconds']:.1f} s"
                f" = {s['ratio']}x{_load_note(s['loaded'])}",
                f">= {s['goal']:g}x",
                _yes(s["met"]),
            )
        )
        rows.append(
            (
                "Search cost per trial after the first (amortized)",
                f"{s['end_to_end_trial_seconds']:.2f} s vs "
                f"{s['cached_trial_seconds_after_first']:.2f} s = {s['amortized_ratio']}x",
                "-",
                "-",
            )
        )
        rows.append(("Same F1 on both paths", f"max |dF1| = {s['max_f1_diff']}", "0", "-"))
    if e := summary.get("extraction"):
        goal = f">= {100 * e['goal']:.0f}%"
        for r in e["sizes"]:
            bound = f" (2-core CPU bound {100 * r['cpu_bound']:.0f}%)" if r.get("cpu_bound") else ""
            rows.append(
                _goal_row(
                    f"Extraction pipeline vs bare forward ({r['image_size']} px, batch "
                    f"{e['batch_size']}, {e['decode_threads']} decode threads)",
                    f"{r['pipeline_img_s']} vs {r['forward_img_s']} img/s = "
                    f"{100 * r['pipeline_vs_forward']:.0f}%{bound}",
                    goal, r["met"], e["loaded"],
                )
            )  # fmt: skip
        if sd := e.get("shared_decode"):
            rows.append(
                _goal_row(
                    f"Extraction of {'/'.join(map(str, sd['sizes']))} px in one pass (each image "
                    "decoded once) vs their bare forward passes",
                    f"{sd['seconds']} s vs {sd['forward_seconds']} s = "
                    f"{100 * sd['pipeline_vs_forward']:.0f}% ({sd['speedup_vs_size_by_size']}x "
                    "size by size)",
                    goal, sd["met"], e["loaded"],
                )
            )  # fmt: skip
    if h := summary.get("head"):
        for name, what in (("paper", "paper head"), ("wide", "wide head (512, dropout, adamw)")):
            f = h[name]
            rows.append(
                _goal_row(
                    f"Head training per trial, reused HeadTrainer, {what}, "
                    f"{f['params']['epochs']} epochs, {h['train_images']} images",
                    f"median {f['seconds_per_trial']:.3f} s, max {f['seconds_max']:.3f} s "
                    f"(first with compile {f['seconds_first_with_compile']:.2f} s)",
                    f"<= {f['goal_seconds']:g} s", f["met"], h["loaded"],
                )
            )  # fmt: skip
    if t := summary.get("search_trial"):
        rows.append(
            _goal_row(
                "Per trial outside training in the cached search (objective, storage, attributes)",
                f"{1000 * (t['outside_training_seconds'] or 0):.0f} ms (head training "
                f"{1000 * (t['train_seconds'] or 0):.0f} ms)",
                f"<= {t['goal']:g} s", t["met"], t["loaded"],
            )
        )  # fmt: skip
    if o := summary.get("overhead"):
        rows.append(
            _goal_row(
                f"Search overhead per trial (storage + sampling, {o['storage']}, "
                f"{o['trials']} trials, no training)",
                f"{o['ms_per_trial']:.1f} ms", f"<= {o['goal_ms']:g} ms", o["met"], o["loaded"],
            )
        )  # fmt: skip
    if m := summary.get("memory"):
        rows.append(
            (
                f"Memory, {m['trials']}-trial grid (cached path)",
                f"peak {m['peak_rss_mb']:.0f} MiB; after trials: first {m['rss_first_mb']:.0f}, "
                f"last {m['rss_last_mb']:.0f}, max {m['rss_max_mb']:.0f} MiB; "
                f"{m['slope_mb_per_trial']:+.2f} MiB/trial within a size",
                "flat",
                _yes(m["flat"]),
            )
        )
    return rows


def _device_line(summary: dict[str, Any]) -> str:
    if summary.get("gpu"):
        return f"GPU {summary['device']}"
    if summary.get("device") == "cpu":
        return "CPU only (no GPU found)"
    return "unknown"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    # cells as str() writes them (the figures are rounded already), laid out by the one renderer
    cells = [dict(zip(header, map(str, row), strict=True)) for row in rows]
    return markdown_table(cells, header)


def render_markdown(report: dict[str, Any]) -> str:
    sec, summ, mach = report["sections"], report["summary"], report["machine"]
    flags = ", ".join(mach["cpu_flags"]) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in mach["versions"].items())
    parts = [
        f"# {report['title']}",
        "",
        f"{report['created']}, {report['seconds']:.0f} s in all. Machine: {mach['cpu']}, "
        f"{mach['cores']} cores, {mach['memory_gib']} GiB; CPU flags {flags}; Keras backend "
        f"{mach['keras_backend']}; {versions}.",
        "",
    ]
    if summ.get("loaded_sections"):
        parts += [
            "**Taken under load**: other processes used more than "
            f"{LOADED_CORES} cores during {', '.join(summ['loaded_sections'])} "
            "(column `other cores` below); those figures are noisy.",
            "",
        ]
    if summ.get("failed_sections"):
        parts += [f"**Failed sections**: {', '.join(summ['failed_sections'])}.", ""]
    parts += [f"Note: {n}" for n in report.get("notes", [])] + [""] * bool(report.get("notes"))
    parts += [f"Device: {_device_line(summ)}", ""]
    parts += ["## Figures", "", _table(FIGURE_COLUMNS, goal_rows(summ))]
    parts += [
        "",
        "## Sections",
        "",
        _table(
            ("Section", "Seconds", "Other cores"),
            [(n, r.get("wall_seconds"), r.get("other_cpu_cores", "?")) for n, r in sec.items()],
        ),
    ]
    e2e, cached = sec.get("search_e2e", {}), sec.get("search_cached", {})
    if "trial_rows" in e2e and "trial_rows" in cached:
        by_key = {_key(r): r for r in e2e["trial_rows"]}
        rows = []
        for r in cached["trial_rows"]:
            e = by_key.get(_key(r), {})
            rows.append(
                (
                    r["number"],
                    r["batch_size"],
                    r["learning_rate"],
                    e.get("seconds"),
                    r["seconds"],
                    r["extract_s"],
                    r["train_s"],
                    e.get("val_f1") and round(e["val_f1"], 4),
                    r["val_f1"] and round(r["val_f1"], 4),
                )
            )
        parts += [
            "",
            f"## Search cost: {cached['trials']} trials at {cached['image_size']} px, "
            f"{cached['train_images']} train + {cached['val_images']} validation images, "
            f"{cached['epochs']} epochs",
            "",
            "Both paths run through `study.optimize` on SQLite, each in a fresh process. The "
            "end-to-end path (the paper's) decodes every image and runs the base every epoch of "
            "every trial; the cached path extracts features once (first trial) and then trains "
            f"only the head (extraction batch {cached.get('extract_batch')}, "
            f"{cached.get('decode_threads')} decode threads, as `clothopt study run` sets them).",
            "",
            _table(
                (
                    "#",
                    "batch",
                    "lr",
                    "end-to-end s",
                    "cached s",
                    "of which extract s",
                    "head train s",
                    "F1 end-to-end",
                    "F1 cached",
                ),
                rows,
            ),
        ]
    if "sizes" in (ext := sec.get("extraction", {})):
        rows = [
            (
                r["image_size"],
                f"{r['forward_img_s']} {r['forward_img_s_per_round']}",
                f"{r['pipeline_img_s']} {r['pipeline_img_s_per_round']}",
                r["decode_only_img_s"],
                f"{r['pipeline_vs_forward']} {r['pipeline_vs_forward_per_round']}",
                r.get("forward_cpu_ms_per_image", "-"),
                r.get("decode_cpu_ms_per_image", "-"),
                r.get("cpu_bound", "-"),
                r["same_features"],
            )
            for r in ext["sizes"]
        ]
        parts += [
            "",
            "## Feature extraction",
            "",
            f"{ext['backbone']}, extraction batch {ext['batch_size']}, {ext['decode_threads']} "
            f"decode threads, {ext['images']} training images, median of {ext['rounds']} "
            "interleaved rounds (each round's figure in brackets). The bare forward pass runs "
            "the same extractor on the same images already decoded in memory (uint8); the "
            "whole extraction is `extract_features` (read, decode, resize, preprocess, forward). "
            "On a CPU-only machine decoding and the forward pass share the cores, so the "
            "extraction can reach at most `cpu bound` = forward CPU time / (forward + decode "
            "CPU time) of the bare forward rate.",
            "",
            _table(
                (
                    "px",
                    "bare forward img/s",
                    "whole extraction img/s",
                    "decode only img/s",
                    "extraction / forward",
                    "forward CPU ms/img",
                    "decode CPU ms/img",
                    "cpu bound",
                    "same features",
                ),
                rows,
            ),
        ]
    if "variants" in (opt := sec.get("options", {})):
        b = opt["baseline"]
        rows = [
            (
                v["option"],
                v["value"],
                v["images"],
                v["pipeline_img_s"],
                v["forward_img_s"],
                v["speedup"],
                f"{v['max_abs_diff']:.3g} / {v['max_rel_diff']:.3g}",
                v.get("max_f1_diff", ""),
                "" if v["option"] == "baseline" else _yes(v.get("within_tolerance")),
                "" if v["option"] == "baseline" else ("yes" if v["recommended"] else "no"),
            )
            for v in opt["variants"]
        ]
        parts += [
            "",
            "## Extraction options",
            "",
            f"Baseline: clothopt's defaults at {opt['image_size']} px: precision "
            f"{b['precision']}, jit_compile {b['jit_compile']}, extraction batch "
            f"{b['batch_size']}, {b['decode_threads']} decode threads ({opt['device']}). "
            f"`recommended`: the whole extraction is at least {MIN_SPEEDUP:g}x faster than "
            "with the defaults and results stay within tolerance: features within "
            f"{FEATURE_TOLERANCE:g} of their largest value (float rounding) for options that "
            f"should not change them; for a lower precision, every trial's validation F1 (the "
            f"search-cost trials) within {F1_TOLERANCE} of float32.",
            "",
            _table(
                (
                    "option",
                    "value",
                    "images",
                    "extraction img/s",
                    "forward img/s",
                    "speedup",
                    "max |dx| abs / rel",
                    "max |dF1|",
                    "within tolerance",
                    "recommended",
                ),
                rows,
            ),
        ]
        if bbs := opt.get("batch_by_size"):
            batches = list(bbs["grid_seconds_per_1000_images"])
            parts += [
                "",
                f"Batch size by image size: bare forward img/s, {bbs['images']} images, median "
                f"of {bbs['rounds']} rounds; the last row is what a grid pays (seconds to "
                f"extract 1000 images at every size). Default {bbs['default']}, best "
                f"{bbs['best']} ({bbs['best_speedup']}x); recommended to change: "
                f"{_yes(bbs['recommended']) if bbs['recommended'] else 'no'}.",
                "",
                _table(
                    ("px", *(f"batch {b}" for b in batches)),
                    [
                        (row["image_size"], *(row["img_s"][b] for b in batches))
                        for row in bbs["sizes"]
                    ]
                    + [
                        (
                            "grid s / 1000 img",
                            *(bbs["grid_seconds_per_1000_images"][b] for b in batches),
                        )
                    ],
                ),
            ]
        if opt.get("skipped"):
            parts += [
                "",
                "Not measured: " + "; ".join(f"{k}: {v}" for k, v in opt["skipped"].items()),
            ]
    if "rss_mb" in (mem := sec.get("memory", {})):
        parts += [
            "",
            "## Memory",
            "",
            f"The `{mem['space']}` grid ({mem['trials']} trials) on the cached path through "
            f"`study.optimize`, {mem['train_images']} train + {mem['val_images']} validation "
            f"images, in a fresh process. Resident MiB after each trial (the `rss_mb` trial "
            f"attribute): {', '.join(f'{x:.0f}' for x in mem['rss_mb'])}. Process peak "
            f"{mem['peak_rss_mb']:.0f} MiB (before the study {mem['rss_before_mb']:.0f} MiB). "
            f"Slope within each image size {mem['slope_mb_per_trial']:+.2f} MiB/trial "
            f"(over all trials {mem['slope_all_mb_per_trial']:+.2f}); rule: {mem['flat_rule']}.",
        ]
    parts += ["", "Reproduce: `make bench` (or `python -m benchmarks.bench --help`).", ""]
    return "\n".join(parts)


def print_table(report: dict[str, Any]) -> None:
    rows = goal_rows(report["summary"])
    for name, fig in (report["summary"].get("options") or {}).items():
        rows.append(
            (
                f"Option {name} (against the defaults)",
                f"{fig['speedup']}x, within tolerance: {fig['within_tolerance']}",
                "-",
                "recommended" if fig["recommended"] else "no",
            )
        )
    if bbs := report["summary"].get("batch_by_size"):
        grid = ", ".join(f"{b}: {v} s" for b, v in bbs["grid_seconds_per_1000_images"].items())
        rows.append(
            (
                "Extraction batch size, grid seconds per 1000 images",
                grid,
                "-",
                f"default {bbs['default']}, best {bbs['best']}",
            )
        )
    print(f"\ndevice: {_device_line(report['summary'])}\n")
    print(format_table([dict(zip(FIGURE_COLUMNS, map(str, r), strict=True)) for r in rows]))
    if report["summary"].get("loaded_sections"):
        print(
            f"\nunder load (other processes > {LOADED_CORES} cores): "
            + ", ".join(report["summary"]["loaded_sections"])
        )
    if report["summary"].get("failed_sections"):
        print("FAILED: " + ", ".join(report["summary"]["failed_sections"]))
    for note in report.get("notes", []):
        print(f"note: {note}")


# --------------------------------------------------------------------------- CLI


def build_settings(args: argparse.Namespace, profile: dict[str, Any] | None = None) -> Settings:
    values: dict[str, Any] = dict(profile or {})
    for name in (
        "backbone",
        "image_size",
        "extract_batch",
        "threads",
        "extract_images",
        "train_images",
        "val_images",
        "memory_train_images",
        "memory_val_images",
    ):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    return Settings(
        data=str(Path(args.data).absolute()), weights=args.weights, work=args.work, **values
    )


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
    p.add_argument("--backbone")
    p.add_argument("--image-size", type=int)
    p.add_argument("--extract-batch", type=int)
    p.add_argument("--threads", type=int, help="decode threads (default: clothopt's)")
    p.add_argument("--extract-images", type=int, help="images for the extraction figures")
    p.add_argument("--train-images", type=int, help="training images for the search (0: all)")
    p.add_argument("--val-images", type=int, help="validation images for the search (0: all)")
    p.add_argument("--memory-train-images", type=int)
    p.add_argument("--memory-val-images", type=int)
    # internal: one section in this process, for the orchestrator
    p.add_argument("--section", help=argparse.SUPPRESS)
    p.add_argument("--settings-file", help=argparse.SUPPRESS)
    p.add_argument("--section-out", help=argparse.SUPPRESS)
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
        result = run_section(args.section, settings)
        atomic_write_json(args.section_out, result)
        return 0
    sections = args.sections.split(",") if args.sections else list(SECTIONS)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
        return 2
    if not Path(args.data).is_dir():
        print(f"data set not found: {args.data} (pass --data DIR)", file=sys.stderr)
        return 2
    temp = None
    if args.work is None:
        temp = tempfile.mkdtemp(prefix="clothopt-bench-")
        args.work = temp
    profile = {**(profile or {}), **(QUICK if args.quick else {})}
    settings = build_settings(args, profile)
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
