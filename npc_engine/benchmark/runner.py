"""The benchmark's phases, with progress lines and a time budget.

1. Start: spawn two sidecars (unless ``endpoint`` is given): the engine as it is ("new")
   and ``npc-engine serve --baseline`` (today's behaviour: no acknowledgements, no
   preemptive replies, silence-only end of turn, the sliding history), both loading at
   once; wait until each is ready and idle (its background pre-rendering of scripted
   lines, which also warms every character's voice, is done); one untimed warm-up turn on
   each. The naive sequential baseline (``--naive``) loads in this process meanwhile.
2. Conversations, push-to-talk and typed: sessions of ``turns_per_session`` turns (a fresh
   player each, characters in turn). Each session is played on both sidecars, one after
   the other, the order swapped every session (new/baseline, baseline/new, ...), so the
   machine's drifting load hits both sides alike; only one sidecar works at a time. A turn
   stops once its second chunk of content arrived (the client sends ``cancel``): felt and
   content TTFA and the first gap in playback are measured, and the rest of the reply,
   which cannot change the next turn's TTFA (the next line waits for ``turn.end``), costs
   no time.
3. Conversations, open mic: the same on open-mic sessions, voice only, each turn timed from
   the end of speech in the clip.
4. Scenes (issue #13): a scene conversation (Marta and Bram, push-to-talk and typed, the
   player addressing one or the other) and, as its control, the same lines on one-to-one
   sessions with the character each line is for, interleaved turn by turn on the new
   sidecar, so both are measured under the same load (``replay.play_scene_pair``).
5. Concurrency: N sessions at once on the new sidecar for each N, whole replies (a
   session's remaining synthesis competes with the others' first chunks, as in a game);
   N = 1 is phase 2's new side.

No new turn starts past its phase's deadline, and a concurrency level still running a
little after its deadline is cut (its sessions closed), so phases 2-5 keep to ``budget_s``
whatever the machine's load; the report says how many turns each phase got. The start
(loading, pre-rendering: one to three minutes on two busy cores) is not in the budget: it
is not the bench's to shorten, and counting it would starve the phases on a loaded machine.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npc_engine.benchmark.naive import NaivePipeline, NaiveResult, NaiveSession
from npc_engine.benchmark.replay import TurnResult, play_scene_pair, play_session
from npc_engine.benchmark.sidecar import Sidecar
from npc_engine.benchmark.workload import (
    CHARACTERS,
    SCENE_CHARACTERS,
    Planned,
    Utterance,
    load_clips,
    plan_scene_turns,
    plan_turns,
)
from npc_engine.client import EngineClient
from npc_engine.config import EngineConfig

Progress = Callable[[str], None]


@dataclass
class BenchConfig:
    engine: EngineConfig  # the models (naive baseline), the budgets and, when spawning, the sidecars' settings
    serve_args: list[str]  # extra `npc-engine serve` arguments for the spawned sidecars
    endpoint: str | None = None  # a running sidecar; None: spawn one
    baseline_endpoint: str | None = None  # with endpoint: a running `serve --baseline` to compare against
    baseline: bool = True  # also run every conversation on a `serve --baseline` sidecar
    turns: int = 30  # push-to-talk sessions' turns (voice and typed), per side
    turns_per_session: int = 10
    open_mic_turns: int = 10  # open-mic sessions' turns, per side
    voice_share: float = 2 / 3
    concurrency: tuple[int, ...] = (1, 2, 4)
    concurrent_turns: int = 12  # turns per concurrency level (at least one per session)
    open_mic_reserve_s: float = 170.0  # kept for the open-mic conversations out of the budget
    concurrency_reserve_s: float = 150.0  # kept for the concurrency levels out of the budget
    scene_turns: int = 10  # scene conversations' turns (0: no scene phase); as many again one-to-one
    scene_characters: tuple[str, ...] = SCENE_CHARACTERS
    scene_reserve_s: float = 165.0  # kept for the scene phase out of the budget
    naive: bool = False
    naive_every: int = 3  # the naive baseline runs on every k-th voice and every k-th typed input
    full_turns: bool = False  # conversations: let each reply finish instead of stopping after its second content chunk
    stop_after_content: int = 2
    clips: Path | None = None
    budget_s: float = 750.0  # phases 2-5, after the start
    seed: int = 0
    keep_dir: Path | None = None


@dataclass
class BenchRun:
    config: dict[str, Any]
    streaming: list[TurnResult] = field(default_factory=list)  # the new side's conversations
    baseline: list[TurnResult] = field(default_factory=list)  # the same conversations on the baseline preset
    naive: list[NaiveResult] = field(default_factory=list)
    concurrency: dict[int, list[TurnResult]] = field(default_factory=dict)
    scenes: list[TurnResult] = field(default_factory=list)  # side "scene" and its control, side "one_to_one"
    notes: list[str] = field(default_factory=list)
    phases_s: dict[str, float] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    silence_limit_ms: float = 0.0  # the first-token budget + 300 ms: no silence should be longer


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.2f} s"


def describe_turn(tag: str, r: TurnResult) -> str:
    t = r.timings
    bits = [f"{tag} {r.turn_kind:12s} {r.character:6s} {r.category:8s} felt {_fmt(r.ttfa_ms)} content {_fmt(r.content_ms)}"]
    parts = [f"{name} {_fmt(t[key])}" for name, key in
             (("stt", "stt_final"), ("token", "llm_first_token"), ("clause", "first_clause"), ("tts", "tts_first_chunk"))
             if key in t]
    if parts:
        bits.append("(" + ", ".join(parts) + ")")
    if r.degraded:
        bits.append("degraded: " + "; ".join(d["stage"] for d in r.degraded))
    return " ".join(bits)


@dataclass
class _Sides:
    """The sidecars a run talks to, by side."""

    endpoints: dict[str, str] = field(default_factory=dict)
    spawned: dict[str, Sidecar] = field(default_factory=dict)


async def _start_sidecars(cfg: BenchConfig, run: BenchRun, progress: Progress) -> _Sides:
    sides = _Sides()
    if cfg.endpoint is not None:
        sides.endpoints["new"] = cfg.endpoint
        if cfg.baseline and cfg.baseline_endpoint:
            sides.endpoints["baseline"] = cfg.baseline_endpoint
        elif cfg.baseline:
            run.notes.append("no baseline: --endpoint without --baseline-endpoint (start one with `npc-engine serve --baseline`)")
        return sides
    progress(f"starting the new sidecar (python -m npc_engine serve {' '.join(cfg.serve_args)}) ...")
    sides.spawned["new"] = Sidecar.spawn(cfg.serve_args, cfg.keep_dir / "new" if cfg.keep_dir else None)
    sides.endpoints["new"] = sides.spawned["new"].endpoint
    return sides


async def _ready(sides: _Sides, side: str, t0: float, progress: Progress) -> None:
    sidecar = sides.spawned[side]
    await asyncio.to_thread(sidecar.wait_ready)
    progress(f"{side} sidecar ready on {sidecar.endpoint} ({time.perf_counter() - t0:.0f} s); waiting for it to go idle "
             "(it pre-renders scripted lines in the background) ...")
    waited = await asyncio.to_thread(sidecar.wait_idle)
    progress(f"{side} sidecar idle after {waited:.0f} s more")


async def _start_baseline(cfg: BenchConfig, sides: _Sides, t0: float, progress: Progress) -> None:
    """The baseline sidecar, once the new one is idle: it shares the new one's cache of
    pre-rendered lines (same voices, same lines; written atomically), so it does not render
    them all again, and its loading does not compete with the other's pre-rendering."""
    args = [*cfg.serve_args, "--baseline"]
    progress(f"starting the baseline sidecar (python -m npc_engine serve {' '.join(args)}) ...")
    new = sides.spawned["new"]
    sides.spawned["baseline"] = Sidecar.spawn(args, cfg.keep_dir / "baseline" if cfg.keep_dir else None,
                                              share_cache=new.data_dir / "cache")
    sides.endpoints["baseline"] = sides.spawned["baseline"].endpoint
    await _ready(sides, "baseline", t0, progress)


async def run_benchmark(cfg: BenchConfig, progress: Progress) -> BenchRun:
    t_bench = time.perf_counter()
    run_id = uuid.uuid4().hex[:6]
    run = BenchRun(config={}, machine={
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "load_at_start": _load(),
    }, silence_limit_ms=float(min(cfg.engine.budget_llm_first_token_ms, cfg.engine.llm_timeout_ms) + 300))
    clips: list[Utterance] = []
    if cfg.voice_share > 0 or cfg.open_mic_turns > 0:
        clips = load_clips(cfg.clips) if cfg.clips else []
        if not clips:
            run.notes.append("no speech clips: typed lines only")
    ptt_plan = plan_turns(cfg.turns, clips, cfg.voice_share, cfg.turns_per_session, cfg.seed)
    n_ptt_sessions = len({p.session for p in ptt_plan})
    open_plan = plan_turns(cfg.open_mic_turns, clips, 1.0, cfg.turns_per_session, cfg.seed + 500,
                           first_session=n_ptt_sessions, mode="open_mic") if clips else []
    scene_plan = plan_scene_turns(cfg.scene_turns, clips, cfg.voice_share, cfg.turns_per_session, cfg.seed + 700,
                                  cfg.scene_characters, first_session=n_ptt_sessions + 100)

    sides = _Sides()
    naive: NaivePipeline | None = None
    try:
        # ---------------------------------------------------------------- 1. start
        t = time.perf_counter()
        sides = await _start_sidecars(cfg, run, progress)
        if cfg.naive:
            # Loads while the sidecars load and pre-render.
            progress("loading and warming the naive baseline's models in this process ...")
            naive = await asyncio.to_thread(NaivePipeline.load, cfg.engine)
            await asyncio.to_thread(naive.warm_voices, list(CHARACTERS))
            progress(f"naive baseline ready ({time.perf_counter() - t:.0f} s)")
        if sides.spawned:
            await _ready(sides, "new", t, progress)
            if cfg.baseline:
                await _start_baseline(cfg, sides, t, progress)
        run.config.update(endpoints=dict(sides.endpoints), spawned=bool(sides.spawned), turns=cfg.turns,
                          turns_per_session=cfg.turns_per_session, open_mic_turns=cfg.open_mic_turns,
                          voice_share=round(cfg.voice_share, 2), naive=cfg.naive, naive_every=cfg.naive_every,
                          stop_after_content=None if cfg.full_turns else cfg.stop_after_content,
                          concurrency=list(cfg.concurrency), concurrent_turns=cfg.concurrent_turns,
                          budget_s=cfg.budget_s, seed=cfg.seed, silence_limit_ms=run.silence_limit_ms,
                          scene_turns=cfg.scene_turns, scene_characters=list(cfg.scene_characters),
                          budget_llm_first_token_ms=cfg.engine.budget_llm_first_token_ms)
        for side, endpoint in sides.endpoints.items():
            if side not in sides.spawned:  # a spawned one was waited for above, by its log and CPU
                await _wait_warm(endpoint, side, progress)
            await _warm_up(endpoint, side, run_id, t_bench, progress)
        run.phases_s["start"] = round(time.perf_counter() - t, 1)
        t_budget = time.perf_counter()  # the budget counts from here: see the module's docstring

        # ---------------------------------------------------------------- 2. push-to-talk and typed
        levels = [n for n in cfg.concurrency if n > 1]
        scene_reserve = cfg.scene_reserve_s if scene_plan else 0.0
        if ptt_plan:
            t = time.perf_counter()
            reserve = ((cfg.concurrency_reserve_s if levels else 10.0) + (cfg.open_mic_reserve_s if open_plan else 0.0)
                       + scene_reserve)
            deadline = t + max(60.0, cfg.budget_s - (t - t_budget) - reserve)
            naive_on = naive_indices(ptt_plan, cfg.naive_every) if naive else set()
            n_voice = sum(p.utterance.kind == "voice" for p in ptt_plan)
            progress(f"conversations: {len(ptt_plan)} turns in sessions of {cfg.turns_per_session} on "
                     f"{' and '.join(sides.endpoints)} ({n_voice} push-to-talk: the clip at real-time pace to its end of "
                     f"speech, the key released 200-300 ms later; {len(ptt_plan) - n_voice} typed)")
            await _conversations(sides.endpoints, ptt_plan, naive, naive_on, run, run_id, t_bench, deadline,
                                 None if cfg.full_turns else cfg.stop_after_content, progress)
            run.phases_s["push_to_talk"] = round(time.perf_counter() - t, 1)

        # ---------------------------------------------------------------- 3. open mic
        if open_plan:
            t = time.perf_counter()
            reserve = (cfg.concurrency_reserve_s if levels else 10.0) + scene_reserve
            deadline = t + max(30.0, cfg.budget_s - (t - t_budget) - reserve)
            progress(f"open mic: {len(open_plan)} voice turns in sessions of {cfg.turns_per_session} (the engine ends "
                     "each turn; timed from the end of speech in the clip)")
            await _conversations(sides.endpoints, open_plan, None, set(), run, run_id, t_bench, deadline,
                                 None if cfg.full_turns else cfg.stop_after_content, progress)
            run.phases_s["open_mic"] = round(time.perf_counter() - t, 1)
        planned = {"push_to_talk or typed": len(ptt_plan), "open mic": len(open_plan)}
        for label, n in planned.items():
            for side in sides.endpoints:
                got = sum(r.side == side and (r.turn_kind == "open_mic") == (label == "open mic")
                          for r in [*run.streaming, *run.baseline])
                if got < n:
                    run.notes.append(f"{label} ({side}): time budget reached after {got} of {n} turns")
        if 1 in cfg.concurrency:
            run.concurrency[1] = [r for r in run.streaming if r.turn_kind != "open_mic"]

        # ---------------------------------------------------------------- 4. scenes
        if scene_plan:
            t = time.perf_counter()
            reserve = cfg.concurrency_reserve_s if levels else 10.0
            deadline = t + max(30.0, cfg.budget_s - (t - t_budget) - reserve)
            progress(f"scenes: {len(scene_plan)} turns in a scene of {' and '.join(cfg.scene_characters)} on the new "
                     f"sidecar, each also said in a one-to-one session with the character it is for, turn by turn "
                     f"(voice turns addressed by facing, typed ones by name)")
            settle = _settle(sides.spawned.get("new"))
            await _scenes(sides.endpoints["new"], scene_plan, list(cfg.scene_characters), run, run_id, t_bench, deadline,
                          None if cfg.full_turns else cfg.stop_after_content, progress, settle)
            run.phases_s["scenes"] = round(time.perf_counter() - t, 1)
            got = sum(r.side == "scene" for r in run.scenes)
            if got < len(scene_plan):
                run.notes.append(f"scenes: time budget reached after {got} of {len(scene_plan)} turns a side")

        # ---------------------------------------------------------------- 5. concurrency
        endpoint = sides.endpoints["new"]
        for k, n in enumerate(levels):
            t = time.perf_counter()
            remaining = cfg.budget_s - (t - t_budget) - 10.0
            # Bigger N, longer turns: each level's share grows with N (weights N + 2: 40/60 % for 2/4).
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
        if sides.spawned:
            run.config["sidecar_logs"] = {side: str(s.log_path) for side, s in sides.spawned.items()} if cfg.keep_dir else None
            await asyncio.gather(*(asyncio.to_thread(s.stop) for s in sides.spawned.values()))
    run.machine["load_at_end"] = _load()
    run.phases_s["total"] = round(time.perf_counter() - t_bench, 1)
    return run


async def _wait_warm(endpoint: str, side: str, progress: Progress) -> None:
    """A running sidecar (``--endpoint``) may still be pre-rendering its scripted lines or
    priming personas: turns timed meanwhile would share the CPU with that work (10 turns started
    right after ``serve``: push-to-talk content p50 2.9 s; the same once warm: 1.6 s)."""
    async with await EngineClient.connect(endpoint, timeout=30, client_name="npc-engine-bench") as client:
        if client.hello.get("warming"):
            progress(f"the {side} sidecar at {endpoint} is still warming up (pre-rendering lines, priming "
                     "personas); waiting for it ...")
            try:
                waited = await client.wait_warm()
            except TimeoutError as exc:  # the CLI prints a RuntimeError as one line
                raise RuntimeError(f"the {side} sidecar at {endpoint}: {exc}; is it stuck? Its log says what it is "
                                   "doing") from exc
            progress(f"the {side} sidecar is warm after {waited:.0f} s")


async def _warm_up(endpoint: str, side: str, run_id: str, t_bench: float, progress: Progress) -> None:
    """One untimed typed turn: the first trip through the whole pipeline is the slow one
    (the voices were warmed by the pre-rendering, the recognizer at load)."""
    progress(f"a warm-up turn on the {side} sidecar (not counted) ...")
    plan = [Planned(-1, CHARACTERS[0], Utterance("text", "Good day to you."), -1)]
    await play_session(endpoint, plan, -1, f"bench-{run_id}-warm-{side}", t_bench, lambda r: None, gap_s=0.0,
                       stop_after_content=1, side=side)


def naive_indices(plan: list[Planned], every: int) -> set[int]:
    """Every ``every``-th voice input and every ``every``-th typed one (so the baseline gets
    the same mix of kinds as the streaming run)."""
    out: set[int] = set()
    for kind in ("voice", "text"):
        idx = [p.index for p in plan if p.utterance.kind == kind]
        out.update(idx[:: max(1, every)])
    return out


async def _conversations(
    endpoints: dict[str, str], plan: list[Planned], naive: NaivePipeline | None, naive_on: set[int], run: BenchRun,
    run_id: str, t_bench: float, deadline: float, stop_after_content: int | None, progress: Progress,
) -> None:
    """Each session of ``plan`` on every side, the order swapped each session (A/B, B/A, ...).

    The first side of a pair gets its share of the time left to ``deadline``; the second
    plays as many turns as the first got, so the two sides always have the same
    conversations to compare and the pair ends near the deadline."""
    total = len(plan) * len(endpoints)
    before = len(run.streaming) + len(run.baseline)  # turns of the phases before this one
    sessions = sorted({p.session for p in plan})
    for k, sid in enumerate(sessions):
        if time.perf_counter() > deadline:
            return
        turns = [p for p in plan if p.session == sid]
        order = list(endpoints) if k % 2 == 0 else list(reversed(endpoints))
        first_deadline = time.perf_counter() + (deadline - time.perf_counter()) / len(order)
        for n, side in enumerate(order):
            got = [r for r in (run.streaming if order[0] == "new" else run.baseline) if r.session == sid]
            if n > 0:
                turns = turns[: len(got)]
            if not turns:
                break
            out = run.streaming if side == "new" else run.baseline
            nsess: NaiveSession | None = None
            if naive is not None and side == "new":
                nsess = naive.open(turns[0].character)
                await asyncio.to_thread(naive.warm, nsess)  # what session.open does on the sidecar

            def on_turn(r: TurnResult, out: list[TurnResult] = out) -> None:
                out.append(r)
                done = len(run.streaming) + len(run.baseline) - before
                progress(describe_turn(f"[{done:3d}/{total}] {r.side:8s}", r))

            between = _naive_between(naive, nsess, turns, naive_on, run.naive, progress) if nsess else None
            await play_session(endpoints[side], turns, sid, f"bench-{run_id}-{side}-s{sid}", t_bench, on_turn,
                               first_deadline if n == 0 else None, between=between, stop_after_content=stop_after_content,
                               side=side)


def _naive_between(
    naive: NaivePipeline | None, nsess: NaiveSession, turns: list[Planned], naive_on: set[int],
    out: list[NaiveResult], progress: Progress,
) -> Callable[[int, TurnResult], Awaitable[None]]:
    """After each new-side turn: the naive baseline on the same input (the sidecar idle meanwhile)."""

    async def between(i: int, r: TurnResult) -> None:
        if naive is None:
            return
        u = turns[i].utterance
        if turns[i].index in naive_on:
            res = await asyncio.to_thread(naive.run_turn, nsess, turns[i].session, u.kind, u.text, u.pcm)
            res.index = turns[i].index
            out.append(res)
            progress(f"[{len(out):2d}/{len(naive_on)}] naive     {res.kind:5s} {res.character:6s} TTFA {_fmt(res.ttfa_ms)} "
                     f"(stt {_fmt(res.stt_ms)}, llm {_fmt(res.llm_ms)}, tts {_fmt(res.tts_ms)})")
        # Both paths go on from the same conversation: what the streaming session said.
        naive.remember(nsess, r.heard or (u.text if u.kind == "text" else None), r.reply_text)

    return between


def _settle(sidecar: Sidecar | None) -> Callable[[], Awaitable[None]] | None:
    """Wait for a spawned sidecar to go idle (the characters' persona warm-ups after the
    opens); with ``--endpoint`` there is no process to watch, and the turn-by-turn order
    swap spreads that work over both sides instead."""
    if sidecar is None:
        return None

    async def settle() -> None:
        await asyncio.to_thread(sidecar.wait_idle, 30.0)

    return settle


async def _scenes(
    endpoint: str, plan: list[Planned], characters: list[str], run: BenchRun, run_id: str, t_bench: float,
    deadline: float, stop_after_content: int | None, progress: Progress,
    settle: Callable[[], Awaitable[None]] | None,
) -> None:
    """Each scene conversation of ``plan`` with its one-to-one control (``play_scene_pair``)."""
    total = 2 * len(plan)

    def on_turn(r: TurnResult) -> None:
        run.scenes.append(r)
        routed = "" if r.answered_by in (None, r.character) else f" (answered by {r.answered_by})"
        progress(describe_turn(f"[{len(run.scenes):3d}/{total}] {r.side:10s}", r) + routed)

    for sid in sorted({p.session for p in plan}):
        if time.perf_counter() > deadline:
            return
        turns = [p for p in plan if p.session == sid]
        await play_scene_pair(endpoint, turns, characters, sid, f"bench-{run_id}-s{sid}", t_bench, on_turn, deadline,
                              stop_after_content=stop_after_content, settle=settle)


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
