"""The benchmark's PNG: where the time to first audio goes, its distribution, and concurrency.

Three panels: (1) stacked bars of per-stage medians for the new engine (by kind of turn)
and, when it ran, the naive baseline; (2) the distributions of felt and content TTFA, new
engine and ``--baseline`` preset (push-to-talk and typed turns, as a cumulative share of
turns); (3) p50/p95 content TTFA against simultaneous sessions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from npc_engine.benchmark.report import (
    KIND_LABELS,
    NAIVE_LABELS,
    NAIVE_STAGES,
    SPAN_LABELS,
    SPANS,
    TURN_KINDS,
)

STREAM_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
NAIVE_COLOURS = ["#a1c9f4", "#ffb482", "#8de5a1"]


def _med(s: dict[str, Any] | None) -> float:
    return (s or {}).get("median") or 0.0


def write_png(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(15, 9.5), dpi=110)
    grid = fig.add_gridspec(2, 2, height_ratios=[1.05, 1], hspace=0.55, wspace=0.22)
    ax_bars = fig.add_subplot(grid[0, :])
    ax_cdf = fig.add_subplot(grid[1, 0])
    ax_conc = fig.add_subplot(grid[1, 1])
    st = report["streaming"]
    nv = report.get("naive")

    # ---------------------------------------------------------------- 1. stacked stages
    rows: list[tuple[str, list[tuple[str, float, str]]]] = []
    for kind in TURN_KINDS:
        spans = st["spans_ms_by_kind"][kind]
        if any(spans.values()):
            n = (st["content_ttfa_ms_by_kind"][kind] or {}).get("n", 0)
            rows.append((f"new, {KIND_LABELS[kind]}\n(n={n})",
                         [(SPAN_LABELS[s], _med(spans[s]) / 1000, c) for s, c in zip(SPANS, STREAM_COLOURS, strict=True)]))
    for kind in ("voice", "text"):
        if nv and any(nv["stages_ms_by_kind"][kind].values()):
            n = (nv["ttfa_ms_by_kind"][kind] or {}).get("n", 0)
            stages = nv["stages_ms_by_kind"][kind]
            rows.append((f"naive, {kind}\n(n={n})",
                         [(NAIVE_LABELS[s], _med(stages[s]) / 1000, c) for s, c in zip(NAIVE_STAGES, NAIVE_COLOURS, strict=True)]))
    xmax = max((sum(p[1] for p in parts) for _, parts in rows), default=1.0)
    seen: set[str] = set()
    for y, (_label, parts) in enumerate(rows):
        left = 0.0
        for name, width, colour in parts:
            if width <= 0:
                continue
            ax_bars.barh(y, width, left=left, color=colour, edgecolor="white", height=0.62,
                         label=name if name not in seen else None)
            seen.add(name)
            if width > 0.045 * xmax:
                ax_bars.text(left + width / 2, y, f"{width:.2f}", ha="center", va="center", fontsize=8, color="black")
            left += width
        ax_bars.text(left + 0.03, y, f"{left:.2f} s", va="center", fontsize=9, fontweight="bold")
    ax_bars.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=9)
    ax_bars.invert_yaxis()
    ax_bars.set_xlabel("seconds from the end of the player's turn (median of each stage; content turns)")
    ax_bars.set_title("Where the time to first audio goes (new engine; the naive sequential baseline when it ran)")
    ax_bars.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8.5, ncol=5, frameon=False)
    ax_bars.grid(axis="x", alpha=0.3)
    ax_bars.set_xlim(0, xmax * 1.12 + 0.1)

    # ---------------------------------------------------------------- 2. distribution
    turns = report["turns"]
    curves: list[tuple[list[float], str, str, str]] = []
    for side, key, colour in (("new", "streaming", STREAM_COLOURS[0]), ("baseline", "baseline", STREAM_COLOURS[3])):
        ts = [t for t in turns.get(key, []) if t["category"] not in ("scripted", "no_turn") and t["turn_kind"] != "open_mic"]
        for metric, field, style in (("content", "content_ms", "-"), ("felt", "ttfa_ms", ":")):
            values = sorted(t[field] / 1000 for t in ts if t.get(field) is not None)
            curves.append((values, f"{side}, {metric}", colour, style))
    n_ttfa = sorted(t["ttfa_ms"] / 1000 for t in turns["naive"] if not t["scripted"] and t["reply_text"])
    curves.append((n_ttfa, "naive", NAIVE_COLOURS[1], "-"))
    for values, label, colour, style in curves:
        if values:
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax_cdf.step(values, ys, where="post", label=f"{label} (n={len(values)})", color=colour, linewidth=2,
                        linestyle=style)
    ratios = {(r["kind"], r["metric"]): r for r in report.get("ab", [])}
    ptt = ratios.get(("push_to_talk", "content"))
    if ptt and ptt["p50_ratio"]:
        ax_cdf.text(0.98, 0.05, f"push-to-talk content, baseline/new: p50 {ptt['p50_ratio']:.2f}x, "
                    f"p95 {(ptt['p95_ratio'] or 0):.2f}x", transform=ax_cdf.transAxes, ha="right", fontsize=10,
                    bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9})
    ax_cdf.set_xlabel("time to first audio (s)")
    ax_cdf.set_ylabel("share of turns at or below")
    ax_cdf.set_title("TTFA distribution, push-to-talk and typed (solid: content; dotted: felt)")
    ax_cdf.set_ylim(0, 1.02)
    ax_cdf.set_xlim(left=0)
    ax_cdf.grid(alpha=0.3)
    ax_cdf.legend(loc="center right", fontsize=9)

    # ---------------------------------------------------------------- 3. concurrency
    conc = [r for r in report["concurrency"] if r["ttfa_ms"]]
    if conc:
        ns = [r["sessions"] for r in conc]
        p50 = [r["ttfa_ms"]["median"] / 1000 for r in conc]
        p95 = [r["ttfa_ms"]["p95"] / 1000 for r in conc]
        ax_conc.plot(ns, p50, "o-", label="p50", color=STREAM_COLOURS[0], linewidth=2)
        ax_conc.plot(ns, p95, "s--", label="p95", color=STREAM_COLOURS[3], linewidth=2)
        for r, a, b in zip(conc, p50, p95, strict=True):
            ax_conc.annotate(f"{a:.1f}", (r["sessions"], a), textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
            ax_conc.annotate(f"{b:.1f}  (n={r['counted_turns']})", (r["sessions"], b), textcoords="offset points",
                             xytext=(0, 7), ha="center", fontsize=8)
        ax_conc.set_xscale("log", base=2)
        ax_conc.set_xticks(ns, [str(n) for n in ns])
        ax_conc.set_xlim(min(ns) / 1.5, max(ns) * 1.5)
        ax_conc.set_ylim(0, max(p95) * 1.25)
        ax_conc.legend(loc="upper left", fontsize=9)
    ax_conc.set_xlabel("simultaneous sessions")
    ax_conc.set_ylabel("content TTFA (s)")
    ax_conc.set_title("content TTFA under concurrency (new engine)")
    ax_conc.grid(alpha=0.3)

    m = report["machine"]
    fig.suptitle(f"npc-engine bench — {m.get('cpus')} CPUs, load average {m.get('load_at_start')} at start "
                 "(shared machine: compare ratios)", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
