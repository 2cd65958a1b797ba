"""Turn a benchmark run into numbers: per-stage statistics, content TTFA, speed-up, concurrency.

"Content" turns are those whose first audio is the model's reply; scripted story lines
and fallback lines come from the pre-rendered cache and would flatter the numbers, so
they are summarized apart. The streaming TTFA is the client's: from sending the end of
the player's turn (``audio.end`` or ``text``) to receiving the first ``reply.audio``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from npc_engine.benchmark.naive import NaiveResult
from npc_engine.benchmark.replay import TurnResult
from npc_engine.benchmark.runner import BenchRun
from npc_engine.benchmark.stats import Summary, ratio, summarize
from npc_engine.metrics import AUDIO_PATH, audio_path_spans

MARKS: tuple[str, ...] = ("end_of_turn_delay", "stt_final", "llm_first_token", "first_clause", "tts_first_chunk",
                          "first_audio_sent", "llm_done", "total")
# Spans of the path to first audio (each ends at a mark), plus the trip to the client.
SPANS: tuple[str, ...] = (*AUDIO_PATH, "transport")
SPAN_LABELS: dict[str, str] = {
    "stt_final": "STT final (after release)",
    "llm_first_token": "LLM first token",
    "first_clause": "first clause (chunker)",
    "tts_first_chunk": "TTS first chunk",
    "first_audio_sent": "to the socket",
    "transport": "transport to client",
}
NAIVE_STAGES: tuple[str, ...] = ("stt", "llm", "tts")
NAIVE_LABELS = {"stt": "STT whole clip", "llm": "LLM whole reply", "tts": "TTS whole reply"}


def _d(s: Summary | None) -> dict[str, Any] | None:
    return s.to_dict() if s else None


def spans_of(r: TurnResult) -> dict[str, float]:
    spans = audio_path_spans(r.timings)
    if spans and r.transport_ms is not None:
        spans["transport"] = r.transport_ms
    return spans


def streaming_summary(results: list[TurnResult]) -> dict[str, Any]:
    content = [r for r in results if r.category == "content"]
    by_category: dict[str, Any] = {}
    for cat in sorted({r.category for r in results}):
        rs = [r for r in results if r.category == cat]
        by_category[cat] = {"turns": len(rs), "ttfa_ms": _d(summarize(r.ttfa_ms for r in rs))}
    return {
        "turns": len(results),
        "content_turns": len(content),
        "by_category": by_category,
        "degraded_turns": sum(bool(r.degraded) for r in results),
        "degraded_stages": sorted({d["stage"] for r in results for d in r.degraded}),
        "content_ttfa_ms": _d(summarize(r.ttfa_ms for r in content)),
        "content_ttfa_ms_by_kind": {k: _d(summarize(r.ttfa_ms for r in content if r.kind == k)) for k in ("voice", "text")},
        "server_first_audio_ms": _d(summarize(r.timings.get("first_audio_sent") for r in content)),
        "marks_ms": {m: _d(summarize(r.timings.get(m) for r in content)) for m in MARKS},
        "spans_ms": {s: _d(summarize(spans_of(r).get(s) for r in content)) for s in SPANS},
        "spans_ms_by_kind": {k: {s: _d(summarize(spans_of(r).get(s) for r in content if r.kind == k)) for s in SPANS}
                             for k in ("voice", "text")},
    }


def naive_summary(results: list[NaiveResult]) -> dict[str, Any]:
    content = [r for r in results if not r.scripted and r.reply_text]
    return {
        "turns": len(results),
        "content_turns": len(content),
        "ttfa_ms": _d(summarize(r.ttfa_ms for r in content)),
        "ttfa_ms_by_kind": {k: _d(summarize(r.ttfa_ms for r in content if r.kind == k)) for k in ("voice", "text")},
        "stages_ms": {s: _d(summarize(r.stages.get(s) for r in content)) for s in NAIVE_STAGES},
        "stages_ms_by_kind": {k: {s: _d(summarize(r.stages.get(s) for r in content if r.kind == k)) for s in NAIVE_STAGES}
                              for k in ("voice", "text")},
    }


def speedup(streaming: list[TurnResult], naive: list[NaiveResult]) -> dict[str, Any] | None:
    """Naive over streaming TTFA on the turns where both paths answered with model content."""
    by_index = {s.index: s for s in streaming}
    pairs = [(by_index[n.index], n) for n in naive if n.index in by_index]
    pairs = [(s, n) for s, n in pairs
             if s.said == n.said and s.category == "content" and s.ttfa_ms is not None and not n.scripted and n.reply_text]
    if not pairs:
        return None
    out: dict[str, Any] = {"pairs": len(pairs)}
    for kind in ("all", "voice", "text"):
        ps = [(s, n) for s, n in pairs if kind == "all" or s.kind == kind]
        st, nv = summarize(s.ttfa_ms for s, _ in ps), summarize(n.ttfa_ms for _, n in ps)
        if st is None or nv is None:
            continue
        per_pair = summarize(n.ttfa_ms / s.ttfa_ms for s, n in ps if s.ttfa_ms)
        out[kind] = {
            "pairs": len(ps),
            "streaming_ms": st.to_dict(), "naive_ms": nv.to_dict(),
            "median_ratio": round(ratio(nv.median, st.median) or 0, 2),
            "p95_ratio": round(ratio(nv.p95, st.p95) or 0, 2),
            "median_of_pair_ratios": round(per_pair.median, 2) if per_pair else None,
        }
    return out


def concurrency_table(levels: dict[int, list[TurnResult]]) -> list[dict[str, Any]]:
    rows = []
    for n in sorted(levels):
        rs = levels[n]
        content = [r for r in rs if r.category == "content"]
        ttfa = summarize(r.ttfa_ms for r in content)
        rows.append({
            "sessions": n, "turns": len(rs), "content_turns": len(content),
            "ttfa_ms": _d(ttfa),
            "stt_final_ms": _d(summarize(r.timings.get("stt_final") for r in content)),
            "llm_first_token_ms": _d(summarize(r.timings.get("llm_first_token") for r in content)),
            "degraded_turns": sum(bool(r.degraded) for r in rs),
            "no_turn": sum(r.category == "no_turn" for r in rs),
        })
    return rows


def build(run: BenchRun) -> dict[str, Any]:
    return {
        "config": run.config,
        "machine": run.machine,
        "phases_s": run.phases_s,
        "notes": run.notes,
        "streaming": streaming_summary(run.streaming),
        "naive": naive_summary(run.naive) if run.naive else None,
        "speedup": speedup(run.streaming, run.naive) if run.naive else None,
        "concurrency": concurrency_table(run.concurrency),
        "turns": {
            "streaming": [r.to_dict() for r in run.streaming],
            "naive": [r.to_dict() for r in run.naive],
            "concurrency": {str(n): [r.to_dict() for r in rs] for n, rs in run.concurrency.items() if n != 1},
        },
    }


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))


# ---------------------------------------------------------------------------- text


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _row(label: str, s: dict[str, Any] | None, width: int = 28) -> str:
    if not s:
        return f"  {label:<{width}} {'-':>7} {'-':>7} {'-':>7} {'n=0':>6}"
    return f"  {label:<{width}} {_ms(s['median']):>7} {_ms(s['p95']):>7} {_ms(s['max']):>7} {'n=' + str(s['n']):>6}"


def _head(title: str, width: int = 28) -> str:
    return f"{title}\n  {'':<{width}} {'median':>7} {'p95':>7} {'max':>7} {'':>6}   (ms)"


def format_text(report: dict[str, Any]) -> str:
    st = report["streaming"]
    categories = ", ".join(f"{k} {v['turns']}" for k, v in st["by_category"].items())
    stages = f" ({', '.join(st['degraded_stages'])})" if st["degraded_stages"] else ""
    out = [
        "npc-engine bench: time to first audio (TTFA)",
        f"machine: {report['machine'].get('cpus')} CPUs, load average {report['machine'].get('load_at_start')} at start, "
        f"{report['machine'].get('load_at_end')} at end (a shared machine: compare ratios, not absolute times)",
        "",
        f"streaming pipeline: {st['turns']} turns, {st['content_turns']} with model content first "
        f"({categories}); {st['degraded_turns']} degraded{stages}",
        "",
        _head("content TTFA (client: end of the player's turn sent -> first reply.audio received)"),
        _row("all", st["content_ttfa_ms"]),
        _row("voice (push-to-talk)", st["content_ttfa_ms_by_kind"]["voice"]),
        _row("text", st["content_ttfa_ms_by_kind"]["text"]),
        _row("engine: first_audio_sent", st["server_first_audio_ms"]),
    ]
    for cat, v in st["by_category"].items():
        if cat != "content":
            out.append(_row(f"not content: {cat}", v["ttfa_ms"]))
    stopped = report["config"].get("main_stops_at_first_audio")
    out += ["", _head("stage marks (ms since the end of the player's turn; content turns)")]
    out += [_row(m, st["marks_ms"][m]) for m in MARKS
            if st["marks_ms"][m] and not (stopped and m in ("llm_done", "total"))]
    if stopped:
        out.append("  (llm_done and total are left out: each main-run turn was stopped at its first audio)")
    out += ["", _head("time spent per stage on the path to first audio (content turns)")]
    out += [_row(SPAN_LABELS[s], st["spans_ms"][s]) for s in SPANS]
    nv = report.get("naive")
    if nv:
        out += ["", _head(f"naive baseline (sequential, whole input -> whole output; {nv['content_turns']} turns)")]
        out += [_row(NAIVE_LABELS[s], nv["stages_ms"][s]) for s in NAIVE_STAGES]
        out.append(_row("TTFA (whole reply audio)", nv["ttfa_ms"]))
        out.append(_row("TTFA voice", nv["ttfa_ms_by_kind"]["voice"]))
        out.append(_row("TTFA text", nv["ttfa_ms_by_kind"]["text"]))
    sp = report.get("speedup")
    if sp:
        out += ["", f"speed-up of the streaming pipeline over the naive one (same inputs, {sp['pairs']} pairs):"]
        for kind in ("all", "voice", "text"):
            if kind in sp:
                k = sp[kind]
                out.append(f"  {kind:<6} median {_ms(k['naive_ms']['median'])} / {_ms(k['streaming_ms']['median'])} ms = "
                           f"{k['median_ratio']:.2f}x   p95 {_ms(k['naive_ms']['p95'])} / {_ms(k['streaming_ms']['p95'])} ms = "
                           f"{k['p95_ratio']:.2f}x   (median of per-turn ratios {k['median_of_pair_ratios']}x, n={k['pairs']})")
    if report["concurrency"]:
        out += ["", "concurrency (content TTFA, ms, client side):",
                f"  {'sessions':>8} {'turns':>6} {'p50':>7} {'p95':>7} {'max':>7} {'stt p50':>8} {'token p50':>10} {'degraded':>9}"]
        for row in report["concurrency"]:
            t = row["ttfa_ms"] or {}
            out.append(f"  {row['sessions']:>8} {row['content_turns']:>6} {_ms(t.get('median')):>7} {_ms(t.get('p95')):>7} "
                       f"{_ms(t.get('max')):>7} {_ms((row['stt_final_ms'] or {}).get('median')):>8} "
                       f"{_ms((row['llm_first_token_ms'] or {}).get('median')):>10} {row['degraded_turns']:>9}")
    if report["notes"]:
        out += ["", "notes:"] + [f"  - {n}" for n in report["notes"]]
    out += ["", "phases (s): " + ", ".join(f"{k} {v}" for k, v in report["phases_s"].items())]
    return "\n".join(out)
