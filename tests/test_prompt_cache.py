"""The prompt prefix stays cached for a whole conversation (issue #10), on the real model.

A 20-turn text conversation through a real sidecar. Each ``turn.end`` says how many prompt
tokens the turn had (``prompt_tokens``) and how many llama.cpp had to evaluate
(``prompt_tokens_evaluated``, the rest came from the slot's KV cache). What a turn adds to the
previous prompt is the growth of ``prompt_tokens``: the last reply and the new line. A turn
served from the cache evaluates about that; a turn whose prompt changed near its start (the
history window slid) evaluates the whole history again.

A turn whose end changes the next prompt's beginning (a trim) has that prompt, up to the
player's line, evaluated in the background while its reply plays: the session counts those
warm-ups' tokens (``Session.warmed``), and they count here as the next turn's work, or the
sliding window would look cached too. The test waits each warm-up out before the next line,
as a player hearing the reply would.

Structural, not timed: token counts, whatever the machine's speed. The same conversation with
the old sliding window (``history_block`` 1) is run too and must fail the property.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from npc_engine.client import EngineClient
from tests.harness import engine_config, eventually, running_engine

# Small talk for Marta that moves no story beat (asserted below): a story change would rewrite
# her instructions, and so the prompt, for a reason other than the history.
LINES = [
    "What do you serve for supper tonight?",
    "Is the stew any good?",
    "How long has the inn been open?",
    "Do you brew the ale yourself?",
    "What is the best dish on the menu?",
    "Are the rooms upstairs warm?",
    "Which songs do the bards sing here?",
    "How is the weather for the harvest?",
    "Do farmers come here after work?",
    "What bread do you bake each day?",
    "Is the river good for fishing?",
    "Which cheese do you like best?",
    "How old is this building?",
    "Do you keep cats in the kitchen?",
    "What do children play in the square?",
    "Is the winter cold in this valley?",
    "Do you like the smell of fresh herbs?",
    "Which wine goes with roast pork?",
    "How busy is the inn on market day?",
    "What is your favourite season?",
]
# Tokens a turn may evaluate beyond what it added: llama.cpp evaluates the last prompt token
# again when everything matched, and the chat template's joins may tokenize differently.
MARGIN = 8


async def conversation(data_dir: Path, block: int) -> list[dict[str, Any]]:
    """The 20 turns' ``turn.end`` messages, with the history trimmed in blocks of ``block``;
    each with ``warmed`` and ``warmed_prompt`` added: the prompt tokens the session's
    warm-ups evaluated (and their prompts' length) between the previous turn's end and it."""
    cfg = engine_config(data_dir, history_turns=6, history_block=block)
    async with running_engine(cfg) as running:
        client = await EngineClient.connect(running.endpoint)
        try:
            s = await client.open_session("marta", "player-cache", greet=False, audio=False)
            session = running.server.sessions[s.id]
            ends = []
            evaluated = tokens = 0
            for line in LINES:
                # The previous reply is heard out: its warm-up, if any, is done (or never came).
                await eventually(lambda: not session.warming, what="the warm-up to settle")
                warmed = session.warmed.evaluated - evaluated, session.warmed.tokens - tokens
                evaluated, tokens = session.warmed.evaluated, session.warmed.tokens
                msgs = await (await s.say(line)).collect()
                moved = [m for m in msgs if m["type"] == "story"]
                assert not moved, f"{line!r} moved the story: {moved}"
                end = msgs[-1]
                assert end["type"] == "turn.end" and end["status"] == "ok", end
                # The first turn's: the open's warm-up (the persona).
                ends.append({**end, "warmed": warmed[0], "warmed_prompt": warmed[1]})
        finally:
            await client.close()
    return ends


def served_from_cache(ends: list[dict[str, Any]]) -> list[bool]:
    """Per turn after the first: did it and the warm-up before it evaluate no more than it added
    to the previous prompt?"""
    return [
        end["prompt_tokens_evaluated"] + end["warmed"] <= end["prompt_tokens"] - prev["prompt_tokens"] + MARGIN
        for prev, end in itertools.pairwise(ends)
    ]


def table(ends: list[dict[str, Any]]) -> str:
    return ", ".join(f"{e['prompt_tokens_evaluated']}+{e['warmed']}/{e['prompt_tokens']}" for e in ends)


async def test_the_prompt_prefix_stays_cached_across_20_turns(tmp_path: Path) -> None:
    blocks = await conversation(tmp_path / "blocks", block=4)
    sliding = await conversation(tmp_path / "sliding", block=1)
    for ends in (blocks, sliding):
        assert len(ends) == len(LINES)
        for end in ends:
            assert 0 < end["prompt_tokens_evaluated"] <= end["prompt_tokens"], end

    cached = served_from_cache(blocks)
    assert sum(cached) >= 0.8 * len(cached), f"turns served from the cache: {cached}; evaluated+warmed/prompt: {table(blocks)}"
    # A turn misses the cache only right after a block was trimmed: its prompt is shorter.
    trimmed = [i for i in range(1, len(blocks)) if blocks[i]["prompt_tokens"] < blocks[i - 1]["prompt_tokens"]]
    for i, ok in enumerate(cached, start=1):
        assert ok or i in trimmed, f"turn {i + 1}: {table(blocks)}"
    assert trimmed, f"no trim in 20 turns: {table(blocks)}"
    # And those turns had their history evaluated in the background, before the player's line
    # (a warm-up that ended on the previous reply): the turn itself evaluated only what follows
    # it, as a turn between trims does. No warm-up came where nothing was trimmed.
    for i in range(1, len(blocks)):
        end = blocks[i]
        if i not in trimmed:
            assert end["warmed"] == 0, f"turn {i + 1} was warmed: {table(blocks)}"
            continue
        assert end["warmed"] > 0, f"turn {i + 1} was not warmed: {table(blocks)}"
        new = end["prompt_tokens"] - end["warmed_prompt"]
        assert 0 < end["prompt_tokens_evaluated"] <= new + MARGIN, f"turn {i + 1}: {table(blocks)}"
        assert end["prompt_tokens_evaluated"] < end["warmed"], f"turn {i + 1}: {table(blocks)}"

    # The old window slid every turn once full (from turn 8): the property fails there.
    slid = served_from_cache(sliding)
    assert sum(slid) < 0.5 * len(slid), f"the sliding window kept its cache: {slid}; {table(sliding)}"
    assert not any(slid[6:]), f"a sliding turn kept its cache: {slid}; {table(sliding)}"
    # And so the blocks evaluate less over the conversation, though their prompts are longer
    # (the warm-ups' work included).
    evaluated = sum(e["prompt_tokens_evaluated"] + e["warmed"] for e in blocks[1:])
    evaluated_sliding = sum(e["prompt_tokens_evaluated"] + e["warmed"] for e in sliding[1:])
    assert evaluated < evaluated_sliding / 2, f"blocks: {table(blocks)}; sliding: {table(sliding)}"
