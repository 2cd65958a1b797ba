"""The benchmark's phases, with progress lines and a time budget.

1. Start: spawn the sidecar (unless ``endpoint`` is given) while this process loads and
   warms the naive baseline's models; wait until the sidecar is ready and idle (its
   background pre-rendering of scripted lines, which also warms every character's voice,
   is done); one untimed warm-up turn.
2. Main run, one session at a time. Each turn stops at its first audio (the client sends
   ``cancel``): the TTFA is measured, and the rest of the reply, which cannot affect the
   next turn's TTFA (the next line waits for ``turn.end``), costs no time. On every k-th
   voice and typed input the naive baseline follows at once on the same input (the
   sidecar idle meanwhile), so both paths see the same machine load; on a shared machine
   the load drifts, and the ratio is what compares.
3. Concurrency: N sessions at once for each N, whole replies (a session's remaining
   synthesis competes with the others' first chunks, as in a game); N = 1 is the main run.

No new turn starts past its phase's deadline, and a concurrency level still running a
little after its deadline is cut (its sessions closed), so the whole run keeps to
``budget_s`` whatever the machine's load; the report says how many turns each phase got.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npc_engine.benchmark.naive import NaivePipeline, NaiveResult, NaiveSession
from npc_engine.benchmark.replay import TurnResult, play_session
from npc_engine.benchmark.sidecar import Sidecar
from npc_engine.benchmark.workload import CHARACTERS, Planned, Utterance, load_clips, plan_turns
from npc_engine.config import EngineConfig

Progress = Callable[[str], None]


@dataclass
class BenchConfig:
    engine: EngineConfig  # the models (naive baseline) and, when spawning, the sidecar's settings
    serve_args: list[str]  # extra `npc-engine serve` arguments for a spawned sidecar
    endpoint: str | None = None  # a running sidecar; None: spawn one
    turns: int = 30
    turns_per_session: int = 5
    voice_share: float = 2 / 3
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    concurrent_turns: int = 8  # turns per concurrency level (at least one per session)
    concurrency_reserve_s: float = 150.0  # kept for the concurrency levels out of the budget
    naive: bool = True
    naive_every: int = 3  # the naive baseline runs on every k-th voice and every k-th typed input
    full_turns: bool = False  # main run: let each reply finish instead of stopping at its first audio
    clips: Path | None = None
    budget_s: float = 570.0
    seed: int = 0
    keep_dir: Path | None = None


@dataclass
class BenchRun:
    config: dict[str, Any]
    streaming: list[TurnResult] = field(default_factory=list)
    naive: list[NaiveResult] = field(default_factory=list)
    concurrency: dict[int, list[TurnResult]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    phases_s: dict[str, float] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.2f} s"


def describe_turn(tag: str, r: TurnResult) -> str:
    t = r.timings
    bits = [f"{tag} {r.kind:5s} {r.character:6s} {r.category:8s} TTFA {_fmt(r.ttfa_ms)}"]
    parts = [f"{name} {_fmt(t[key])}" for name, key in
             (("stt", "stt_final"), ("token", "llm_first_token"), ("clause", "first_clause"), ("tts", "tts_first_chunk"))
             if key in t]
    if parts:
        bits.append("(" + ", ".join(parts) + ")")
    if r.degraded:
        bits.append("degraded: " + "; ".join(d["stage"] for d in r.degraded))
    return " ".join(bits)


async def run_benchmark(cfg: BenchConfig, progress: Progress) -> BenchRun:
    t_bench = time.perf_counter()
    run_id = uuid.uuid4().hex[:6]
    run = BenchRun(config={}, machine={
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "load_at_start": _load(),
    })
    clips: list[Utterance] = []
    if cfg.voice_share > 0:
        clips = load_clips(cfg.clips) if cfg.clips else []
        if not clips:
            run.notes.append("no speech clips: typed lines only")
    main_plan = plan_turns(cfg.turns, clips, cfg.voice_share, cfg.turns_per_session, cfg.seed)

    sidecar: Sidecar | None = None
    naive: NaivePipeline | None = None
    endpoint = cfg.endpoint
    try:
        # ---------------------------------------------------------------- 1. start
        t = time.perf_counter()
        if endpoint is None:
            progress("starting the sidecar (python -m npc_engine serve) on a free port with a temp data dir ...")
            sidecar = Sidecar.spawn(cfg.serve_args, cfg.keep_dir)
            endpoint = sidecar.endpoint
        if cfg.naive:
            # Loads while the sidecar loads and pre-renders: two processes, two cores.
            progress("loading and warming the naive baseline's models in this process ...")
            naive = await asyncio.to_thread(NaivePipeline.load, cfg.engine)
            await asyncio.to_thread(naive.warm_voices, list(CHARACTERS))
            progress(f"naive baseline ready ({time.perf_counter() - t:.0f} s)")
        if sidecar is not None:
            await asyncio.to_thread(sidecar.wait_ready)
            progress(f"sidecar ready on {endpoint} ({time.perf_counter() - t:.0f} s); waiting for it to go idle "
                     "(it pre-renders scripted lines in the background) ...")
            waited = await asyncio.to_thread(sidecar.wait_idle)
            progress(f"sidecar idle after {waited:.0f} s more")
        run.config.update(endpoint=endpoint, spawned=sidecar is not None, turns=cfg.turns,
                          voice_share=round(cfg.voice_share, 2), naive_every=cfg.naive_every,
                          main_stops_at_first_audio=not cfg.full_turns, concurrency=list(cfg.concurrency),
                          concurrent_turns=cfg.concurrent_turns, budget_s=cfg.budget_s, seed=cfg.seed)
        await _warm_up(endpoint, run_id, t_bench, progress)
        run.phases_s["start"] = round(time.perf_counter() - t, 1)

        # ---------------------------------------------------------------- 2. main run
        t = time.perf_counter()
        elapsed = t - t_bench
        levels = [n for n in cfg.concurrency if n > 1]
        reserve = cfg.concurrency_reserve_s if levels else 10.0
        main_deadline = t + max(60.0, cfg.budget_s - elapsed - reserve)
        naive_on = naive_indices(main_plan, cfg.naive_every) if naive else set()
        n_voice = sum(p.utterance.kind == "voice" for p in main_plan)
        progress(f"main run: {len(main_plan)} turns ({n_voice} voice: clip at real-time pace, then the push-to-talk "
                 f"release; {len(main_plan) - n_voice} typed), the naive baseline after {len(naive_on)} of them")
        run.streaming, run.naive = await _main_run(
            endpoint, main_plan, naive, naive_on, run_id, t_bench, main_deadline, not cfg.full_turns, progress)
        if len(run.streaming) < len(main_plan):
            run.notes.append(f"main run: time budget reached after {len(run.streaming)} of {len(main_plan)} turns")
        run.phases_s["main"] = round(time.perf_counter() - t, 1)
        if 1 in cfg.concurrency:
            run.concurrency[1] = run.streaming

        # ---------------------------------------------------------------- 3. concurrency
        for k, n in enumerate(levels):
            t = time.perf_counter()
            remaining = cfg.budget_s - (t - t_bench) - 10.0
            # Bigger N, longer turns: each level's share grows with N (weights N + 2: 20/30/50 % for 2/4/8).
            share = remaining * (n + 2) / sum(m + 2 for m in levels[k:])
            if share < 15:
                run.notes.append(f"concurrency N={n}: skipped, the time budget is spent")
                progress(f"concurrency N={n}: skipped (time budget)")
                continue
            per_session = max(1, math.ceil(cfg.concurrent_turns / n))
            progress(f"concurrency N={n}: {n} sessions at once, {per_session} turn(s) each, whole replies ...")
            results, cut = await _concurrent(endpoint, n, per_session, clips, cfg, run_id, t_bench, t + share, progress)
            if cut:
                run.notes.append(f"concurrency N={n}: {cut} turn(s) still running at the hard time limit were cut")
            run.concurrency[n] = results
            if len(results) < n * per_session:
                run.notes.append(f"concurrency N={n}: time budget reached after {len(results)} of {n * per_session} turns")
            run.phases_s[f"concurrency_{n}"] = round(time.perf_counter() - t, 1)
    finally:
        if naive is not None:
            naive.close()
        if sidecar is not None:
            run.config["sidecar_log"] = str(sidecar.log_path) if cfg.keep_dir else None
            await asyncio.to_thread(sidecar.stop)
    run.machine["load_at_end"] = _load()
    run.phases_s["total"] = round(time.perf_counter() - t_bench, 1)
    return run


async def _warm_up(endpoint: str, run_id: str, t_bench: float, progress: Progress) -> None:
    """One untimed typed turn: the first trip through the whole pipeline is the slow one
    (the voices were warmed by the pre-rendering, the recognizer at load)."""
    progress("a warm-up turn on the sidecar (not counted) ...")
    plan = [Planned(-1, CHARACTERS[0], Utterance("text", "Good day to you."), -1)]
    await play_session(endpoint, plan, -1, f"bench-{run_id}-warm", t_bench, lambda r: None, gap_s=0.0,
                       stop_after_first_audio=True)


def naive_indices(plan: list[Planned], every: int) -> set[int]:
    """Every ``every``-th voice input and every ``every``-th typed one (so the baseline gets
    the same mix of kinds as the streaming run)."""
    out: set[int] = set()
    for kind in ("voice", "text"):
        idx = [p.index for p in plan if p.utterance.kind == kind]
        out.update(idx[:: max(1, every)])
    return out


async def _main_run(
    endpoint: str, plan: list[Planned], naive: NaivePipeline | None, naive_on: set[int], run_id: str,
    t_bench: float, deadline: float, stop_at_first_audio: bool, progress: Progress,
) -> tuple[list[TurnResult], list[NaiveResult]]:
    streaming: list[TurnResult] = []
    baseline: list[NaiveResult] = []
    total = len(plan)
    sessions = sorted({p.session for p in plan})
    for sid in sessions:
        turns = [p for p in plan if p.session == sid]
        nsess: NaiveSession | None = None
        if naive is not None:
            nsess = naive.open(turns[0].character)
            await asyncio.to_thread(naive.warm, nsess)  # what session.open does on the sidecar

        def on_turn(r: TurnResult) -> None:
            streaming.append(r)
            progress(describe_turn(f"[{len(streaming):2d}/{total}] streaming", r))

        async def between(i: int, r: TurnResult, turns: list[Planned] = turns, nsess: NaiveSession | None = nsess) -> None:
            if naive is None or nsess is None:
                return
            u = turns[i].utterance
            if turns[i].index in naive_on:
                res = await asyncio.to_thread(naive.run_turn, nsess, turns[i].session, u.kind, u.text, u.pcm)
                res.index = turns[i].index
                baseline.append(res)
                progress(f"[{len(baseline):2d}/{len(naive_on)}] naive     {res.kind:5s} {res.character:6s} TTFA {_fmt(res.ttfa_ms)} "
                         f"(stt {_fmt(res.stt_ms)}, llm {_fmt(res.llm_ms)}, tts {_fmt(res.tts_ms)})")
            # Both paths go on from the same conversation: what the streaming session said.
            naive.remember(nsess, r.heard or (u.text if u.kind == "text" else None), r.reply_text)

        await play_session(endpoint, turns, sid, f"bench-{run_id}-s{sid}", t_bench, on_turn, deadline, between=between,
                           stop_after_first_audio=stop_at_first_audio)
        if time.perf_counter() > deadline:
            break
    return streaming, baseline


async def _concurrent(
    endpoint: str, n: int, per_session: int, clips: list[Utterance], cfg: BenchConfig, run_id: str,
    t_bench: float, deadline: float, progress: Progress, grace_s: float = 15.0,
) -> tuple[list[TurnResult], int]:
    """N sessions at once; returns their turns and how many turns were cut at the hard limit."""
    results: list[TurnResult] = []
    plans = [plan_turns(per_session, clips, cfg.voice_share, per_session, cfg.seed + 1000 * n + i, first_session=i)
             for i in range(n)]
    expected = n * per_session
    started = 0

    def on_turn(r: TurnResult) -> None:
        results.append(r)
        progress(describe_turn(f"  N={n} [{len(results):2d}/{expected}]", r))

    async def one(i: int) -> None:
        nonlocal started
        # Players rarely start talking in the same 20 ms: spread the starts over a second.
        await asyncio.sleep(i / n)
        started += 1
        await play_session(endpoint, plans[i], 100 * n + i, f"bench-{run_id}-c{n}-{i}", t_bench, on_turn, deadline)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    _done, pending = await asyncio.wait(tasks, timeout=max(1.0, deadline + grace_s - time.perf_counter()))
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    cut = len(pending)  # each unfinished session had one turn in flight
    return results, cut
