"""Turn a benchmark run into numbers: what the player felt, new vs baseline, stages, concurrency.

Two TTFAs, both the client's, from the end of the player's turn (push-to-talk: ``audio.end``
sent; typed: the line sent; open mic: the end of speech in the clip):

* **felt**: the first ``reply.audio`` of any kind (an acknowledgement such as "Hm." counts:
  the player hears the character react);
* **content**: the first ``reply.audio`` of the reply's own words (``ack`` false).

The A/B table counts every turn that got a reply of its own (the model's, or the fallback
line it fell back to in time: that is what the player heard); a scripted story line comes
from the pre-rendered cache and would flatter either side, so it is counted apart. The
stage tables keep to "content" turns, whose reply is the model's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from npc_engine.benchmark.felt import Comparison, compare
from npc_engine.benchmark.naive import NaiveResult
from npc_engine.benchmark.replay import TurnResult
from npc_engine.benchmark.runner import BenchRun
from npc_engine.benchmark.stats import Summary, percentile, ratio, summarize
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


TURN_KINDS: tuple[str, ...] = ("push_to_talk", "typed", "open_mic")
KIND_LABELS = {"push_to_talk": "push-to-talk", "typed": "typed", "open_mic": "open mic", "all": "all"}
METRICS: tuple[str, ...] = ("felt", "content")


def replied(r: TurnResult) -> bool:
    """Counted in the A/B table: the turn got a reply of its own (the model's, or its
    fallback line), not a pre-rendered story line, and it started at all."""
    return r.category not in ("scripted", "no_turn")


def sample(r: TurnResult, metric: str) -> float | None:
    return r.ttfa_ms if metric == "felt" else r.content_ms


def ab_table(new: list[TurnResult], baseline: list[TurnResult]) -> list[Comparison]:
    """Felt and content TTFA by kind of turn, new against baseline, with baseline/new ratios."""
    rows = []
    for kind in (*TURN_KINDS, "all"):
        ns = [r for r in new if replied(r) and kind in ("all", r.turn_kind)]
        bs = [r for r in baseline if replied(r) and kind in ("all", r.turn_kind)]
        if not ns and not bs:
            continue
        rows += [compare(kind, m, (sample(r, m) for r in ns), (sample(r, m) for r in bs)) for m in METRICS]
    return rows


def silence_summary(results: list[TurnResult], limit_ms: float) -> dict[str, Any]:
    """The longest silence of each turn (the wait for the first audio, or a gap in playback)
    against ``limit_ms`` (the first-token budget + 300 ms)."""
    rs = [r for r in results if r.category != "no_turn"]
    over = [r for r in rs if r.longest_silence_ms is not None and r.longest_silence_ms > limit_ms]
    return {
        "turns": len(rs),
        "limit_ms": limit_ms,
        "longest_ms": _d(summarize(r.longest_silence_ms for r in rs)),
        "over_limit": len(over),
        "over_limit_by_kind": {k: sum(r.turn_kind == k for r in over) for k in TURN_KINDS},
        "over_limit_in_a_gap": sum(bool(r.gaps_ms) and max(r.gaps_ms) > limit_ms for r in over),
        "no_audio": sum(r.ttfa_ms is None for r in rs),
        "stopped_early": sum(r.stopped for r in rs),
    }


def streaming_summary(results: list[TurnResult]) -> dict[str, Any]:
    content = [r for r in results if r.category == "content"]
    by_category: dict[str, Any] = {}
    for cat in sorted({r.category for r in results}):
        rs = [r for r in results if r.category == cat]
        by_category[cat] = {"turns": len(rs), "ttfa_ms": _d(summarize(r.content_ms for r in rs)),
                            "felt_ms": _d(summarize(r.ttfa_ms for r in rs))}
    return {
        "turns": len(results),
        "content_turns": len(content),
        "by_category": by_category,
        "degraded_turns": sum(bool(r.degraded) for r in results),
        "degraded_stages": sorted({d["stage"] for r in results for d in r.degraded}),
        "content_ttfa_ms": _d(summarize(r.content_ms for r in content)),
        "content_ttfa_ms_by_kind": {k: _d(summarize(r.content_ms for r in content if r.turn_kind == k)) for k in TURN_KINDS},
        "felt_ttfa_ms_by_kind": {k: _d(summarize(r.ttfa_ms for r in content if r.turn_kind == k)) for k in TURN_KINDS},
        "server_first_audio_ms": _d(summarize(r.timings.get("first_audio_sent") for r in content)),
        "marks_ms": {m: _d(summarize(r.timings.get(m) for r in content)) for m in MARKS},
        "spans_ms": {s: _d(summarize(spans_of(r).get(s) for r in content)) for s in SPANS},
        "spans_ms_by_kind": {k: {s: _d(summarize(spans_of(r).get(s) for r in content if r.turn_kind == k)) for s in SPANS}
                             for k in TURN_KINDS},
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
             if s.said == n.said and s.category == "content" and s.content_ms is not None and not n.scripted and n.reply_text]
    if not pairs:
        return None
    out: dict[str, Any] = {"pairs": len(pairs)}
    for kind in ("all", "voice", "text"):
        ps = [(s, n) for s, n in pairs if kind == "all" or s.kind == kind]
        st, nv = summarize(s.content_ms for s, _ in ps), summarize(n.ttfa_ms for _, n in ps)
        if st is None or nv is None:
            continue
        per_pair = summarize(n.ttfa_ms / s.content_ms for s, n in ps if s.content_ms)
        out[kind] = {
            "pairs": len(ps),
            "streaming_ms": st.to_dict(), "naive_ms": nv.to_dict(),
            "median_ratio": round(ratio(nv.median, st.median) or 0, 2),
            "p95_ratio": round(ratio(nv.p95, st.p95) or 0, 2),
            "median_of_pair_ratios": round(per_pair.median, 2) if per_pair else None,
        }
    return out


def concurrency_table(levels: dict[int, list[TurnResult]]) -> list[dict[str, Any]]:
    """Content TTFA per number of simultaneous sessions, overall and for the worst session
    (the target is per conversation: each one's median)."""
    rows = []
    for n in sorted(levels):
        rs = levels[n]
        counted = [r for r in rs if replied(r)]
        content = [r for r in rs if r.category == "content"]
        per_session = [percentile(sorted(v), 50) for v in _by_session(counted).values() if v]
        # A fallback line at the first-token budget is audio, but not an answer: the same
        # median over the model's own replies only, so a run that falls back often cannot
        # pass for a fast one.
        answered = [percentile(sorted(v), 50) for v in _by_session(content).values() if v]
        rows.append({
            "sessions": n, "turns": len(rs), "counted_turns": len(counted), "content_turns": len(content),
            "ttfa_ms": _d(summarize(r.content_ms for r in counted)),
            "felt_ms": _d(summarize(r.ttfa_ms for r in counted)),
            "worst_session_p50_ms": round(max(per_session), 1) if per_session else None,
            "worst_session_answers_p50_ms": round(max(answered), 1) if answered else None,
            "stt_final_ms": _d(summarize(r.timings.get("stt_final") for r in content)),
            "llm_first_token_ms": _d(summarize(r.timings.get("llm_first_token") for r in content)),
            "degraded_turns": sum(bool(r.degraded) for r in rs),
            "no_turn": sum(r.category == "no_turn" for r in rs),
        })
    return rows


SCENE_SIDES: tuple[str, str] = ("scene", "one_to_one")


def scene_table(results: list[TurnResult]) -> dict[str, Any] | None:
    """Issue #13: felt and content TTFA of scene turns against their one-to-one control (the
    same lines, the same run, interleaved turn by turn), by kind of turn, with the ratio
    scene / one-to-one (1.20x: a scene turn waits 20 % longer). Counted as in the A/B
    table (``replied``); a scene turn answered by another character than the one addressed
    is counted too (the player heard an answer) and reported as ``misrouted``."""
    if not results:
        return None
    rows: list[dict[str, Any]] = []
    for kind in ("push_to_talk", "typed", "all"):
        sides = {side: [r for r in results if r.side == side and replied(r) and kind in ("all", r.turn_kind)]
                 for side in SCENE_SIDES}
        if not any(sides.values()):
            continue
        for metric in METRICS:
            # compare()'s ratio is its second argument over its first: here scene / one-to-one.
            c = compare(kind, metric, (sample(r, metric) for r in sides["one_to_one"]),
                        (sample(r, metric) for r in sides["scene"]))
            rows.append({"kind": kind, "metric": metric, "scene": _d(c.baseline), "one_to_one": _d(c.new),
                         "p50_ratio": c.p50_ratio, "p95_ratio": c.p95_ratio})
    scene = [r for r in results if r.side == "scene"]
    # Where a difference comes from: the model's first token after the line (the final
    # transcript or the typed line) and the prompt tokens it had to evaluate for it.
    content = {side: [r for r in results if r.side == side and r.category == "content"] for side in SCENE_SIDES}
    stages = {side: {
        "llm_first_token_after_line_ms": _d(summarize(
            r.timings["llm_first_token"] - r.timings.get("stt_final", 0.0) for r in rs if "llm_first_token" in r.timings)),
        "prompt_tokens_evaluated": _d(summarize(r.prompt_tokens_evaluated for r in rs)),
        "preemptive_commits": sum(bool(r.preemptive) for r in rs),
    } for side, rs in content.items()}
    return {
        "turns": {side: sum(r.side == side for r in results) for side in SCENE_SIDES},
        "by_category": {side: {cat: sum(r.side == side and r.category == cat for r in results)
                               for cat in sorted({r.category for r in results})} for side in SCENE_SIDES},
        "misrouted": sum(r.answered_by is not None and r.answered_by != r.character for r in scene),
        "rows": rows,
        "stages": stages,
    }


def _by_session(rs: list[TurnResult]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for r in rs:
        if r.content_ms is not None:
            out.setdefault(r.session, []).append(r.content_ms)
    return out


def _row_of(rows: list[Comparison], kind: str, metric: str) -> Comparison | None:
    return next((c for c in rows if c.kind == kind and c.metric == metric), None)


def targets(ab: list[Comparison], silences: dict[str, Any], conc: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets (#10, item 7), each with the value this run measured and whether
    it was met (None: not measured in this run)."""

    def check(label: str, value: float | None, limit: float, at_least: bool = False, unit: str = "ms") -> dict[str, Any]:
        ok = None if value is None else (value >= limit if at_least else value <= limit)
        return {"target": label, "value": value, "limit": limit, "unit": unit, "ok": ok}

    def stat(kind: str, metric: str, which: str) -> float | None:
        row = _row_of(ab, kind, metric)
        side = row.new if row else None
        return None if side is None else round(side.median if which == "p50" else side.p95, 1)

    ptt = _row_of(ab, "push_to_talk", "content")
    n4 = next((r for r in conc if r["sessions"] == 4), None)
    longest = (silences.get("longest_ms") or {}).get("max")
    return [
        check("felt TTFA p50, all turns", stat("all", "felt", "p50"), 300),
        check("push-to-talk content TTFA p50", stat("push_to_talk", "content", "p50"), 1500),
        check("push-to-talk content TTFA p95", stat("push_to_talk", "content", "p95"), 2500),
        check("push-to-talk content TTFA p50, baseline/new", ptt.p50_ratio if ptt else None, 2.0, at_least=True, unit="x"),
        check("open mic, end of speech -> content p50", stat("open_mic", "content", "p50"), 2000),
        check("longest silence in any turn", longest, float(silences.get("limit_ms") or 0)),
        check("N=4: content TTFA p50 of the worst session", n4["worst_session_p50_ms"] if n4 else None, 3000),
        check("N=4: the same, the model's own replies only", n4["worst_session_answers_p50_ms"] if n4 else None, 3000),
    ]


def build(run: BenchRun) -> dict[str, Any]:
    ab = ab_table(run.streaming, run.baseline)
    silences = {side: silence_summary(rs, run.silence_limit_ms) for side, rs in (("new", run.streaming), ("baseline", run.baseline))}
    conc = concurrency_table(run.concurrency)
    return {
        "config": run.config,
        "machine": run.machine,
        "phases_s": run.phases_s,
        "notes": run.notes,
        "ab": [c.to_dict() for c in ab],
        "silence": silences,
        "targets": targets(ab, silences["new"], conc),
        "streaming": streaming_summary(run.streaming),
        "baseline": streaming_summary(run.baseline) if run.baseline else None,
        "naive": naive_summary(run.naive) if run.naive else None,
        "speedup": speedup(run.streaming, run.naive) if run.naive else None,
        "concurrency": conc,
        "scenes": scene_table(run.scenes),
        "turns": {
            "streaming": [r.to_dict() for r in run.streaming],
            "baseline": [r.to_dict() for r in run.baseline],
            "naive": [r.to_dict() for r in run.naive],
            "concurrency": {str(n): [r.to_dict() for r in rs] for n, rs in run.concurrency.items() if n != 1},
            "scenes": [r.to_dict() for r in run.scenes],
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


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _ab_lines(report: dict[str, Any]) -> list[str]:
    rows = report["ab"]
    has_base = any(r["baseline"] for r in rows)
    out = ["felt TTFA (any audio, an acknowledgement included) and content TTFA (the reply's own words), ms from the",
           "end of the player's turn (push-to-talk: audio.end sent; typed: line sent; open mic: end of speech in the clip)"]
    head = f"  {'turns':<13} {'metric':<8} {'new p50':>8} {'p95':>6} {'n':>4}"
    if has_base:
        head += f" | {'base p50':>8} {'p95':>6} {'n':>4} | {'ratio p50':>9} {'p95':>6}"
    out.append(head)
    for r in rows:
        new, base = r["new"] or {}, r["baseline"] or {}
        line = (f"  {KIND_LABELS[r['kind']]:<13} {r['metric']:<8} {_ms(new.get('median')):>8} {_ms(new.get('p95')):>6} "
                f"{new.get('n', 0):>4}")
        if has_base:
            line += (f" | {_ms(base.get('median')):>8} {_ms(base.get('p95')):>6} {base.get('n', 0):>4} | "
                     f"{_x(r['p50_ratio']):>9} {_x(r['p95_ratio']):>6}")
        out.append(line)
    if has_base:
        out.append("  (base: `npc-engine serve --baseline`, today's behaviour, same conversations in the same run, "
                   "sessions interleaved; ratio: baseline / new, 2.00x is twice as fast)")
    else:
        out.append("  (no baseline in this run)")
    return out


def _scene_lines(report: dict[str, Any]) -> list[str]:
    sc = report.get("scenes")
    if not sc:
        return []
    chars = " and ".join(report["config"].get("scene_characters") or ["several characters"])
    out = [f"scenes (issue #13), new engine: a scene of {chars} against one-to-one sessions with the same lines,",
           "turn by turn in the same run (ms from the end of the player's turn; ratio: scene / one-to-one)",
           f"  {'turns':<13} {'metric':<8} {'scene p50':>9} {'p95':>6} {'n':>4} | {'1:1 p50':>8} {'p95':>6} {'n':>4} | "
           f"{'ratio p50':>9} {'p95':>6}"]
    for r in sc["rows"]:
        a, b = r["scene"] or {}, r["one_to_one"] or {}
        out.append(f"  {KIND_LABELS[r['kind']]:<13} {r['metric']:<8} {_ms(a.get('median')):>9} {_ms(a.get('p95')):>6} "
                   f"{a.get('n', 0):>4} | {_ms(b.get('median')):>8} {_ms(b.get('p95')):>6} {b.get('n', 0):>4} | "
                   f"{_x(r['p50_ratio']):>9} {_x(r['p95_ratio']):>6}")
    cats = "; ".join(f"{side.replace('_', '-')}: " + ", ".join(f"{k} {v}" for k, v in c.items() if v)
                     for side, c in sc["by_category"].items())
    st = sc["stages"]
    out.append("  model's first token after the line p50 / prompt tokens evaluated p50 / preemptive replies committed: "
               + ", ".join(f"{side.replace('_', '-')} {_ms((st[side]['llm_first_token_after_line_ms'] or {}).get('median'))} ms"
                           f" / {_ms((st[side]['prompt_tokens_evaluated'] or {}).get('median'))}"
                           f" / {st[side]['preemptive_commits']}" for side in SCENE_SIDES))
    out.append(f"  ({cats}; {sc['misrouted']} scene turn(s) answered by another character than the one addressed;")
    out.append("   the scene's voice turns are addressed by `scene.update facing`, its typed ones by name)")
    return out


def _silence_lines(report: dict[str, Any]) -> list[str]:
    out = []
    for side, s in report["silence"].items():
        if not s["turns"]:
            continue
        lm = s["longest_ms"] or {}
        kinds = ", ".join(f"{KIND_LABELS[k]} {v}" for k, v in s["over_limit_by_kind"].items() if v)
        out.append(f"  {side:<8} longest silence per turn: p50 {_ms(lm.get('median'))}, p95 {_ms(lm.get('p95'))}, "
                   f"max {_ms(lm.get('max'))} ms; {s['over_limit']} of {s['turns']} turns over {s['limit_ms']:.0f} ms"
                   + (f" ({kinds}; {s['over_limit_in_a_gap']} in a gap between chunks)" if s["over_limit"] else "")
                   + (f"; {s['no_audio']} without audio" if s["no_audio"] else ""))
    if out:
        stopped = report["config"].get("stop_after_content")
        note = f"; each turn was stopped after {stopped} chunk(s) of content, later gaps are not measured" if stopped else ""
        out.insert(0, f"silence: the wait for the first audio, and each gap in playback (chunks played back to back{note})")
    return out


def _target_lines(report: dict[str, Any]) -> list[str]:
    out = ["targets (issue #10, item 7; new engine):"]
    for t in report["targets"]:
        mark = {True: "met", False: "MISSED", None: "not measured"}[t["ok"]]
        value = "-" if t["value"] is None else (f"{t['value']:.2f}x" if t["unit"] == "x" else f"{t['value']:.0f} ms")
        limit = f">= {t['limit']:.1f}x" if t["unit"] == "x" else f"<= {t['limit']:.0f} ms"
        out.append(f"  {t['target']:<46} {value:>9}  ({limit}) {mark}")
    return out


def format_text(report: dict[str, Any]) -> str:
    st = report["streaming"]
    categories = ", ".join(f"{k} {v['turns']}" for k, v in st["by_category"].items())
    stages = f" ({', '.join(st['degraded_stages'])})" if st["degraded_stages"] else ""
    out = [
        "npc-engine bench: what the player feels (time to first audio)",
        f"machine: {report['machine'].get('cpus')} CPUs, load average {report['machine'].get('load_at_start')} at start, "
        f"{report['machine'].get('load_at_end')} at end (a shared machine: compare ratios, not absolute times)",
    ]
    conversations = bool(st["turns"])  # none with `--only scenes`: their sections would be all dashes
    if conversations:
        out += ["", f"new engine: {st['turns']} turns, {st['content_turns']} with the model's reply ({categories}); "
                f"{st['degraded_turns']} degraded{stages}"]
    bs = report.get("baseline")
    if bs and conversations:
        bcat = ", ".join(f"{k} {v['turns']}" for k, v in bs["by_category"].items())
        out.append(f"baseline: {bs['turns']} turns, {bs['content_turns']} with the model's reply ({bcat}); "
                   f"{bs['degraded_turns']} degraded")
    if conversations:
        out += ["", *_ab_lines(report), "", *_silence_lines(report)]
        out += ["", _head("new engine, content turns: stage marks (ms since the end of the player's turn)")]
        out += [_row(m, st["marks_ms"][m]) for m in MARKS if st["marks_ms"][m] and m not in ("llm_done", "total")]
        out += ["", _head("new engine, content turns: time per stage on the path to the first audio")]
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
        out += ["", f"speed-up of the new engine's content TTFA over the naive one (same inputs, {sp['pairs']} pairs):"]
        for kind in ("all", "voice", "text"):
            if kind in sp:
                k = sp[kind]
                out.append(f"  {kind:<6} median {_ms(k['naive_ms']['median'])} / {_ms(k['streaming_ms']['median'])} ms = "
                           f"{k['median_ratio']:.2f}x   p95 {_ms(k['naive_ms']['p95'])} / {_ms(k['streaming_ms']['p95'])} ms = "
                           f"{k['p95_ratio']:.2f}x   (median of per-turn ratios {k['median_of_pair_ratios']}x, n={k['pairs']})")
    scenes = _scene_lines(report)
    if scenes:
        out += ["", *scenes]
    if report["concurrency"]:
        out += ["", "concurrency, new engine (content TTFA, ms, client side; N = 1: the push-to-talk and typed conversations,",
                "stopped early; N > 1: whole replies):",
                f"  {'sessions':>8} {'turns':>6} {'p50':>7} {'p95':>7} {'max':>7} {'worst session p50':>18} "
                f"{'(replies only)':>15} {'felt p50':>9} {'stt p50':>8} {'token p50':>10} {'degraded':>9}"]
        for row in report["concurrency"]:
            t = row["ttfa_ms"] or {}
            out.append(f"  {row['sessions']:>8} {row['counted_turns']:>6} {_ms(t.get('median')):>7} {_ms(t.get('p95')):>7} "
                       f"{_ms(t.get('max')):>7} {_ms(row['worst_session_p50_ms']):>18} "
                       f"{_ms(row.get('worst_session_answers_p50_ms')):>15} "
                       f"{_ms((row['felt_ms'] or {}).get('median')):>9} {_ms((row['stt_final_ms'] or {}).get('median')):>8} "
                       f"{_ms((row['llm_first_token_ms'] or {}).get('median')):>10} {row['degraded_turns']:>9}")
    if conversations or report["concurrency"]:
        out += ["", *_target_lines(report)]
    if report["notes"]:
        out += ["", "notes:"] + [f"  - {n}" for n in report["notes"]]
    out += ["", "phases (s): " + ", ".join(f"{k} {v}" for k, v in report["phases_s"].items())]
    return "\n".join(out)
