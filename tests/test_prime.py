"""Characters' personas are primed at start (``Engine.prime_personas``), on the real model.

Evaluating a persona (~450 tokens) takes ~3 s on one core: without priming, a player who
speaks right after walking up waits for it (the session's own warm-up holds the slot). The
engine evaluates each character's opening prompt into a KV cache of its own at start; the
first conversation with the character takes that cache, and its first line evaluates only
itself. Structural, not timed: the token counts llama.cpp reports in ``turn.end``.
"""

from __future__ import annotations

from pathlib import Path

from npc_engine.client import EngineClient
from tests.harness import engine_config, running_engine

LINE = "What do you do all day?"


async def test_a_first_line_right_after_open_finds_the_persona_primed(tmp_path: Path) -> None:
    # Two caches: the first two characters are primed, the third is not (the control).
    cfg = engine_config(tmp_path / "data", llm_slots=2, prime_personas=True)
    async with running_engine(cfg) as run:
        *primed, control = list(run.engine.characters)[:3]
        client = await EngineClient.connect(run.endpoint)
        try:
            # As a game would know it: the engine says it is warming until the priming is over
            # (a wrong answer shows below, as a primed character evaluating its own persona).
            await client.wait_warm(timeout=600)
            assert run.engine.primed == tuple(primed), "warm once the priming is over"
            evaluated = {}
            for cid in (*primed, control):
                # Speaks at once: the session's own warm-up of the persona has not happened.
                s = await client.open_session(cid, f"p-{cid}", greet=False, audio=False)
                end = (await (await s.say(LINE)).collect())[-1]
                assert end["type"] == "turn.end" and end["status"] == "ok", end
                # The session's warm-up (which the line may have waited for) counts too.
                warmed = run.server.sessions[s.id].warmed.evaluated
                evaluated[cid] = (end["prompt_tokens_evaluated"] + warmed, end["prompt_tokens"])
                await s.close()
            # A game that names its player: the persona is shared up to "You are talking to
            # Robin" (the objective and the examples come after it).
            s = await client.open_session(primed[0], "p-named", greet=False, audio=False, vars={"player_name": "Robin"})
            end = (await (await s.say(LINE)).collect())[-1]
            named = end["prompt_tokens_evaluated"] + run.server.sessions[s.id].warmed.evaluated, end["prompt_tokens"]
            await s.close()
        finally:
            await client.close()
    for cid in primed:
        own, total = evaluated[cid]
        # The player's line and the chat template's markers (~15 tokens), not the persona.
        assert own < 40 < total, f"{cid}: {evaluated}"  # (turn + warm-up, prompt)
    own, total = evaluated[control]
    assert own > total // 2, f"the control evaluated its persona itself: {evaluated}"
    assert named[0] < named[1] // 2, f"named player: {named}; {evaluated}"
