"""Report of a budgeted precision search: JSON, a Markdown page and a PNG plot.

The page has the status (met or not, and why), the budget, sizes, the whole-model effect on the
search and confirmation batches, a per-module table (precision chosen, bytes, each candidate
precision's effect when quantized alone: relative ΔNE, ΔAUC and output SQNR, and why the module was
kept above its cheapest precision) and the plans tried. The PNG has two panels: sensitivity per
module, and size vs NE change of every plan tried with the budget line.

Example:
    >>> paths = write_plan_report(result, "artifacts/int8")          # doctest: +SKIP
    >>> sorted(paths)                                                 # doctest: +SKIP
    ['json', 'md', 'png']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.precisions import TRIAL_PRECISIONS
from .search import SearchResult

__all__ = ["write_plan_report", "plan_markdown", "plot_plan", "PLAN_REPORT_FILES"]

PLAN_REPORT_FILES = ("plan_report.json", "plan_report.md", "plan_report.png")


def _pct(x: float) -> str:
    return f"{100 * x:+.4f}%"


def _mb(n: float) -> str:
    return f"{n / 1e6:.3f} MB" if n >= 1e5 else f"{int(n):,} B"


def _effect(res: dict[str, Any] | None) -> str:
    if res is None:
        return "—"
    text = f"{_pct(res['ne_rel_delta'])} / {res['auc_delta']:+.5f}"
    if "ci95" in res:
        (n0, n1), (a0, a1) = res["ci95"]["ne_rel_delta"], res["ci95"]["auc_delta"]
        text += f" (95% interval {_pct(n0)} to {_pct(n1)} / {a0:+.5f} to {a1:+.5f})"
    return text


def plan_markdown(result: SearchResult, png_name: str | None = "plan_report.png") -> str:
    """The Markdown page for ``result`` (``png_name``: the plot to embed, or None)."""
    d = result.to_dict()
    sens = result.sensitivity
    ref = result.references.get("all_int8")
    task = sens.task if sens.task not in ("mean", "worst") else f"{sens.task} over tasks {sens.tasks or ['0']}"
    lines = [
        "# Quantization plan report",
        "",
        f"**Status: {'MET' if result.met else 'NOT MET: no artifact written'}.** {result.message}",
        "",
        f"- Budget: {result.budget.describe()} (metric: {task}); relative ΔNE = (NE_q - NE_fp32) / NE_fp32, "
        "ΔAUC = AUC_q - AUC_fp32.",
        f"- Size: {_mb(result.bytes)} vs {_mb(result.fp32_bytes)} in fp32 (ratio {d['size_ratio']:.4f}); "
        f"share of the bytes in int8/int4: {result.int8_bytes_fraction:.4f}.",
        f"- Search batches ({sens.num_rows} rows): ΔNE/ΔAUC {_effect(result.search)}; "
        f"confirmation batches: {_effect(result.confirm) if result.confirm else 'none'}.",
        "- Float baseline (search batches): "
        + ", ".join(f"{t}: NE {v['ne']:.5f}, AUC {v['auc']:.5f}" for t, v in sens.baseline.items()) + ".",
        *([f"- Uniform all-int8 plan for comparison: {_mb(ref['bytes'])}, ΔNE/ΔAUC {_effect(ref)} "
           f"(meets the budget: {'yes' if ref['meets_budget'] else 'no'})."] if ref else []),
        f"- {len(result.trail)} whole-model plan(s) evaluated; sensitivity took {result.seconds['sensitivity']:.1f} s "
        f"({sum(len(m.trials) for m in sens.modules)} single-module trials), search {result.seconds['search']:.1f} s.",
        "",
        "## Modules",
        "",
        "Effect of quantizing each module alone: relative ΔNE / ΔAUC, and the SQNR of the module's output.",
        "",
        "| module | kind | precision | bytes | fp32 bytes | " + " | ".join(f"alone at {p}" for p in TRIAL_PRECISIONS)
        + " | why kept higher |",
        "|---|---|---|---:|---:|" + "---|" * len(TRIAL_PRECISIONS) + "---|",
    ]  # fmt: skip
    for m in sens.modules:
        cells = []
        for p in TRIAL_PRECISIONS:
            t = m.trials.get(p)
            cells.append("—" if t is None else f"{_pct(t['ne_rel_delta'])} / {t['auc_delta']:+.5f} / {t['sqnr_db']:.1f} dB")
        lines.append(
            f"| `{m.name}` | {m.kind} | **{result.plan[m.name]}** | {result.module_bytes[m.name]:,} | {m.fp32_bytes:,} | "
            + " | ".join(cells) + f" | {result.reasons.get(m.name, '')} |"
        )  # fmt: skip
    lines += ["", "## Plans tried", "",
              "| step | change | bytes | size ratio | ΔNE (rel.) | ΔAUC | meets budget | confirmation ΔNE / ΔAUC |",
              "|---:|---|---:|---:|---:|---:|---|---|"]  # fmt: skip
    for t in result.trail:
        conf = "—" if t.confirmed is None else (
            f"{_pct(t.confirm_ne_rel_delta)} / {t.confirm_auc_delta:+.5f} ({'meets' if t.confirmed else 'misses'})")
        lines.append(f"| {t.step} | {t.change} | {t.bytes:,} | {t.size_ratio:.4f} | {_pct(t.ne_rel_delta)} | {t.auc_delta:+.5f} | "
                     f"{'yes' if t.meets_budget else 'no'} | {conf} |")  # fmt: skip
    if png_name:
        lines += ["", f"![sensitivity per module and size vs NE of the plans tried]({png_name})"]
    return "\n".join(lines) + "\n"


def plot_plan(result: SearchResult, path: str | Path) -> None:
    """Two panels: per-module sensitivity (relative ΔNE alone, per precision) and size vs ΔNE of the
    plans tried, with the budget line. Uses matplotlib's Agg canvas (no display, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mods = result.sensitivity.modules
    use_ne = result.budget.ne is not None
    fig = Figure(figsize=(13, max(4.5, 0.28 * len(mods) + 1.5)))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    names = [m.name for m in mods]
    h = 0.8 / len(TRIAL_PRECISIONS)
    for k, p in enumerate(TRIAL_PRECISIONS):
        ys = [i + (k - 1) * h for i, m in enumerate(mods) if p in m.trials]
        xs = [100 * m.trials[p]["ne_rel_delta"] if use_ne else -m.trials[p]["auc_delta"] for m in mods if p in m.trials]
        if xs:
            ax1.barh(ys, xs, height=h, label=f"{p} alone")
    limit = 100 * result.budget.ne if use_ne else result.budget.auc
    ax1.axvline(limit, color="red", linestyle="--", label="budget")
    ax1.set_xscale("symlog", linthresh=max(limit / 10, 1e-6))
    ax1.set_yticks(range(len(names)), [n if len(n) < 34 else "…" + n[-33:] for n in names], fontsize=7)
    ax1.invert_yaxis()
    ax1.set_xlabel("relative NE increase (%) when quantized alone" if use_ne else "AUC drop when quantized alone")
    ax1.set_title("Sensitivity per module")
    ax1.legend(fontsize=7)
    xs = [t.size_ratio for t in result.trail]
    ys = [100 * t.ne_rel_delta if use_ne else -t.auc_delta for t in result.trail]
    ax2.plot(xs, ys, "o-", color="tab:blue", label="plans tried, search batches (in order)")
    for t, x, y in zip(result.trail, xs, ys):
        ax2.annotate(str(t.step), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    checked = [t for t in result.trail if t.confirmed is not None]
    if checked:
        cy = [100 * t.confirm_ne_rel_delta if use_ne else -t.confirm_auc_delta for t in checked]
        ax2.plot([t.size_ratio for t in checked], cy, "x", color="tab:orange", markersize=9, label="confirmation batches")
    final = result.confirm or result.search  # the figures the decision rests on
    fy = 100 * final["ne_rel_delta"] if use_ne else -final["auc_delta"]
    ax2.plot([xs[-1]], [fy], "*", markersize=14, color="green" if result.met else "black",
             label="final plan, " + ("confirmed" if result.confirm else "search") + ("" if result.met else " (budget not met)"))  # fmt: skip
    ref = result.references.get("all_int8")
    if ref is not None:
        y = 100 * ref["ne_rel_delta"] if use_ne else -ref["auc_delta"]
        ax2.plot([ref["size_ratio"]], [y], "s", color="gray", label="all int8 (reference)")
    ax2.axhline(limit, color="red", linestyle="--", label="budget")
    ax2.set_yscale("symlog", linthresh=max(limit / 10, 1e-6))
    ax2.set_xlabel("model size / fp32 size")
    ax2.set_ylabel("relative NE increase (%)" if use_ne else "AUC drop")
    ax2.set_title("Size vs accuracy of the plans tried")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)


def write_plan_report(result: SearchResult, out_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Write ``plan_report.json``, ``plan_report.md`` and ``plan_report.png`` into ``out_dir`` (created
    if needed; existing report files are only replaced with ``overwrite=True``). Returns the paths."""
    if not isinstance(result, SearchResult):
        raise TypeError(f"result must be a SearchResult (from search_plan), got {type(result).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    paths = {"json": out / PLAN_REPORT_FILES[0], "md": out / PLAN_REPORT_FILES[1], "png": out / PLAN_REPORT_FILES[2]}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"report files already exist: {existing}; pass overwrite=True to replace them")
    out.mkdir(parents=True, exist_ok=True)
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    paths["md"].write_text(plan_markdown(result, PLAN_REPORT_FILES[2]))
    plot_plan(result, paths["png"])
    return paths
