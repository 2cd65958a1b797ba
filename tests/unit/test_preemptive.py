"""Preemptive replies: a voice turn's reply starts when the player falls silent (on the
speculative final), and is committed at the end of the turn if the final says the same
words, or dropped without a trace (no message, no memory, no turn id).

The microphone is real code (``VoiceInput``, ``TurnRecognizer``, ``EndOfTurnDetector``) on
test doubles: ``ToneTranscriber`` (tone words read back exactly) and ``EnergyVad`` (any
non-silent window is speech), so the VAD's events fall exactly where the audio puts them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest

from npc_engine.engine import Engine
from npc_engine.metrics import order_violations
from npc_engine.pipeline.stt_turns import TurnRecognizer
from npc_engine.pipeline.vad import EndOfTurnDetector, TurnConfig
from npc_engine.protocol import outgoing as msg
from npc_engine.session.session import Mode, Session
from npc_engine.session.voice import VoiceInput, same_words
from npc_engine.turns.handle import TurnHandle
from tests.doubles import EnergyVad, ScriptedChat, ScriptedReply, SilenceSynth, ToneTranscriber
from tests.unit.conftest import DEFAULT_REPLY, PLAYER, World, unit_config
from tests.unit.support import Sent, end_of, eventually, finished

LINE = "Nice weather today."
HALF, REST = "Nice weather", "today for the harvest."  # a pause between them
FRAME = 320  # 20 ms, as a game sends it
HELD = 0.3  # seconds of silence with the key still down: past silence_start, short of anything else
SLOW = ScriptedReply(
    "Hm, the forge is cold today and the coals will not catch however hard I work the bellows. "
    "Come back at dawn when the iron is hot.",
    tokens_per_s=20,
)


@dataclass
class VoiceRig:
    engine: Engine
    chat: ScriptedChat
    synth: SilenceSynth
    ears: ToneTranscriber
    session: Session
    sent: Sent

    async def speak(self, text: str, silence_s: float = HELD) -> None:
        """The player says ``text`` then is silent for ``silence_s``; returns once all of it is recognised."""
        pcm = self.ears.say(text, silence_s)
        for i in range(0, len(pcm), FRAME):
            self.session.audio_in(pcm[i : i + FRAME].tobytes())
        await self.voice.drained()

    async def release(self) -> None:
        self.session.audio_end()
        await self.voice.drained()

    @property
    def voice(self) -> VoiceInput:
        assert self.session.voice_input is not None
        return self.session.voice_input

    @property
    def preempted(self) -> TurnHandle:
        turn = self.voice.preempted
        assert turn is not None and turn.speculative, "a preemptive reply is waiting"
        return turn

    def turn_messages(self) -> list[msg.SessionMessage]:
        return [m for m in self.sent.messages if isinstance(m, msg.SessionMessage) and not isinstance(m, msg.Transcript)]

    async def history(self) -> list[str]:
        assert [e.content for e in self.session.memory.history] == [
            h.content for h in await self.engine.store.load_history(PLAYER, "bram")
        ]
        return [e.content for e in self.session.memory.history]


class MakeVoice(Protocol):
    async def __call__(
        self, chat: ScriptedChat, *, mode: Mode = ..., preempt: bool = ..., ears: ToneTranscriber | None = ..., **cfg: Any
    ) -> VoiceRig: ...


@pytest.fixture
async def make_voice(tmp_path: Path, world: World) -> AsyncIterator[MakeVoice]:
    rigs: list[VoiceRig] = []
    characters, story = world

    async def make(
        chat: ScriptedChat, *, mode: Mode = "push_to_talk", preempt: bool = True, ears: ToneTranscriber | None = None,
        **cfg: Any,
    ) -> VoiceRig:
        """``preempt``: the session's choice (session.open); ``preemptive=`` in ``cfg``: the engine's."""
        ears = ears or ToneTranscriber()
        synth = SilenceSynth("silence-a")
        engine = Engine.assemble(
            unit_config(tmp_path / f"engine-{len(rigs)}", **cfg), characters, story, chat,
            synth=synth, fallback_synth=SilenceSynth("silence-b"), transcriber=ears, vad_model=EnergyVad(),
        )
        sent = Sent()
        session = Session(engine, f"v{len(rigs) + 1}", engine.characters["bram"], PLAYER, sent, mode=mode, preemptive=preempt)
        await session.open({})
        rig = VoiceRig(engine, chat, synth, ears, session, sent)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        if not rig.session.closed:
            await rig.session.close()
        await rig.engine.close()


def assert_only_turn_1(rig: VoiceRig) -> msg.TurnEnd:
    """Every turn message is turn 1's, numbered without a gap, and the turn is whole."""
    msgs = rig.turn_messages()
    assert {m.turn for m in msgs} == {1}, [(m.TYPE, m.turn) for m in msgs]
    assert [m.seq for m in msgs] == list(range(len(msgs)))
    assert isinstance(msgs[0], msg.TurnStart) and isinstance(msgs[-1], msg.TurnEnd)
    return msgs[-1]


# ------------------------------------------------------------------ committed


async def test_a_preemptive_reply_commits_when_the_key_is_released(make_voice: MakeVoice) -> None:
    rig = await make_voice(ScriptedChat([DEFAULT_REPLY]))
    await rig.speak(LINE)
    turn = rig.preempted
    assert turn.user_text == LINE and turn.preemptive
    # Before the decision the reply runs (model, first chunk), silently.
    await eventually(lambda: len(turn.delivered.audio_text) == 1, what="the first chunk synthesized")
    await finished(rig.chat.calls[0])
    assert rig.turn_messages() == [], "nothing of an undecided reply reaches the game"
    assert rig.session.memory.history == []
    assert rig.synth.texts == ["Hm, the forge is cold"], "only the first chunk is synthesized before the decision"

    await rig.release()
    await rig.sent.first(msg.TurnEnd, turn=1)
    end = assert_only_turn_1(rig)
    assert end.status == "ok" and end.preemptive is True and end.text == DEFAULT_REPLY
    assert rig.sent.of(msg.TurnStart, 1)[0].input == LINE
    t = end.timings
    assert t["preemptive_lead"] > 0, t
    # Reached before the decision: they read 0 on the clock that starts at it.
    assert t["stt_final"] == t["llm_first_token"] == t["first_clause"] == t["first_audio_sent"] == 0, t
    assert order_violations(t) == []
    assert [a.chunk for a in rig.sent.of(msg.ReplyAudio, 1) if not getattr(a, "ack", False)] == [0, 1, 2]
    assert len(rig.chat.calls) == 1, "the committed reply is the one the model wrote: no second call"
    assert rig.voice.preempt_stats.started == rig.voice.preempt_stats.committed == 1
    assert await rig.history() == [LINE, DEFAULT_REPLY]


async def test_a_preemptive_reply_commits_at_the_vads_end_of_turn(make_voice: MakeVoice) -> None:
    rig = await make_voice(ScriptedChat([DEFAULT_REPLY]), mode="open_mic")
    await rig.speak(LINE, silence_s=1.2)  # past end_of_turn_ms (600): the VAD ends the turn
    await rig.sent.first(msg.TurnEnd, turn=1)
    end = assert_only_turn_1(rig)
    assert end.preemptive is True and end.text == DEFAULT_REPLY
    assert end.timings["end_of_turn_delay"] > 0 and end.timings["preemptive_lead"] > 0
    assert order_violations(end.timings) == []
    assert rig.voice.preempt_stats.committed == 1 and rig.voice.preempt_stats.dropped == 0
    assert await rig.history() == [LINE, DEFAULT_REPLY]


async def test_a_slow_release_does_not_run_the_first_token_budget_down(make_voice: MakeVoice) -> None:
    """The budget counts from the decision: an undecided reply waits for its token however long."""
    rig = await make_voice(ScriptedChat([ScriptedReply(DEFAULT_REPLY, ttft_s=0.4)]), budget_llm_first_token_ms=200)
    await rig.speak(LINE)
    turn = rig.preempted
    await eventually(lambda: bool(rig.chat.calls), what="the model asked")
    await finished(rig.chat.calls[0])  # its first token came 400 ms in: twice the budget
    await rig.release()
    await rig.sent.first(msg.TurnEnd, turn=1)
    end = end_of(rig.sent, 1)
    assert (end.status, end.text, end.degraded) == ("ok", DEFAULT_REPLY, None), end
    assert turn.tokens > 0


# ------------------------------------------------------------------ dropped


async def test_the_player_going_on_drops_the_reply_without_a_trace(make_voice: MakeVoice) -> None:
    rig = await make_voice(ScriptedChat([SLOW, DEFAULT_REPLY]))
    await rig.speak(HALF)  # a pause mid-sentence: the reply to "Nice weather" starts
    first = rig.preempted
    assert first.user_text == HALF
    await eventually(lambda: bool(rig.chat.calls) and rig.chat.calls[0].tokens >= 2, what="the first reply streaming")

    await rig.speak(REST)  # the player goes on
    await first.wait()
    assert first.dropped and first.id is None
    await finished(rig.chat.calls[0])
    assert rig.chat.calls[0].stopped_early, "dropping it stopped the model"
    second = rig.preempted  # the new silence: a reply to the whole line
    assert second is not first and second.user_text == f"{HALF} {REST}"

    await rig.release()
    await rig.sent.first(msg.TurnEnd, turn=1)
    end = assert_only_turn_1(rig)
    assert end.preemptive is True and end.text == DEFAULT_REPLY
    assert [m.input for m in rig.sent.of(msg.TurnStart)] == [f"{HALF} {REST}"]
    assert await rig.history() == [f"{HALF} {REST}", DEFAULT_REPLY]
    # No damage to the prompt: the reply that counts was asked with the same prefix (persona,
    # examples, history) as the dropped one, so the model's cached prefix still serves it.
    dropped, kept = rig.chat.calls
    assert kept.messages[:-1] == dropped.messages[:-1] and kept.affinity == dropped.affinity
    assert rig.voice.preempt_stats == type(rig.voice.preempt_stats)(started=2, committed=1, dropped=1)


async def test_a_final_that_differs_drops_the_reply_and_answers_the_final(make_voice: MakeVoice) -> None:
    rig = await make_voice(ScriptedChat([SLOW, DEFAULT_REPLY]), ears=ToneTranscriber(final_extra="friend"))
    await rig.speak(LINE)
    spec = rig.preempted
    await eventually(lambda: bool(rig.chat.calls), what="the model asked for the preemptive reply")
    await rig.release()
    await rig.sent.first(msg.TurnEnd, turn=1)
    assert spec.dropped
    end = assert_only_turn_1(rig)
    assert end.preemptive is None, "answered afresh, not preemptively"
    assert "preemptive_lead" not in end.timings
    assert rig.sent.of(msg.TurnStart, 1)[0].input == f"{LINE} friend"
    assert end.text == DEFAULT_REPLY
    assert await rig.history() == [f"{LINE} friend", DEFAULT_REPLY]


async def test_a_cancel_drops_the_waiting_reply_and_the_turn_is_answered_afresh(make_voice: MakeVoice) -> None:
    rig = await make_voice(ScriptedChat([SLOW, DEFAULT_REPLY]))
    await rig.speak(LINE)
    spec = rig.preempted
    # The waiting reply's model call under way (SLOW): the fresh answer is then the script's
    # second reply. Cancelled before its call began, the fresh turn got SLOW (a busy machine).
    await eventually(lambda: len(rig.chat.calls) == 1, what="the preemptive reply's model call")
    rig.session.cancel()
    assert spec.dropped
    await rig.release()
    await rig.sent.first(msg.TurnEnd, turn=1)
    end = assert_only_turn_1(rig)
    assert end.preemptive is None and end.text == DEFAULT_REPLY
    assert await rig.history() == [LINE, DEFAULT_REPLY]


async def test_closing_the_session_drops_the_waiting_reply(make_voice: MakeVoice) -> None:
    rig = await make_voice(ScriptedChat([SLOW]))
    await rig.speak(LINE)
    spec = rig.preempted
    await rig.session.close()
    await spec.wait()
    assert spec.dropped and rig.turn_messages() == []
    assert await rig.history() == []


async def test_silence_only_drops_nothing_and_starts_nothing(make_voice: MakeVoice) -> None:
    rig = await make_voice(ScriptedChat([DEFAULT_REPLY]))
    rig.session.audio_in(np.zeros(16000, np.int16).tobytes())
    await rig.release()
    assert rig.voice.preempt_stats.started == 0 and rig.turn_messages() == []


# ------------------------------------------------------------------ off, or not now


@pytest.mark.parametrize("where", ["session", "engine"])
async def test_preemption_off_waits_for_the_decision(make_voice: MakeVoice, where: str) -> None:
    rig = await (make_voice(ScriptedChat([DEFAULT_REPLY]), preempt=False) if where == "session"
                 else make_voice(ScriptedChat([DEFAULT_REPLY]), preempt=True, preemptive=False))
    await rig.speak(LINE)
    assert rig.voice.preempted is None and rig.chat.calls == [], "nothing starts before the decision"
    await rig.release()
    await rig.sent.first(msg.TurnEnd, turn=1)
    end = assert_only_turn_1(rig)
    assert end.preemptive is None and "preemptive_lead" not in end.timings
    assert end.timings["stt_final"] >= 0 and end.text == DEFAULT_REPLY
    assert rig.voice.preempt_stats.started == 0


async def test_no_preemption_once_the_key_release_is_known(make_voice: MakeVoice) -> None:
    """Recognition lagging behind: the release is queued behind the silence, so the end of the
    turn is known when the silence is decoded; the turn is answered as usual."""
    rig = await make_voice(ScriptedChat([DEFAULT_REPLY]))
    pcm = rig.ears.say(LINE, HELD)
    for i in range(0, len(pcm), FRAME):
        rig.session.audio_in(pcm[i : i + FRAME].tobytes())
    rig.session.audio_end()  # queued before any frame is recognised
    await rig.voice.drained()
    await rig.sent.first(msg.TurnEnd, turn=1)
    end = assert_only_turn_1(rig)
    assert end.preemptive is None and end.text == DEFAULT_REPLY
    assert rig.voice.preempt_stats.started == 0


async def test_no_preemption_while_the_npc_is_still_speaking(make_voice: MakeVoice) -> None:
    """A reply written before the running turn recorded its memory would not know it."""
    rig = await make_voice(ScriptedChat([SLOW, DEFAULT_REPLY]))
    running = rig.session.start_turn("text", "Tell me about the forge.")
    await rig.sent.first(msg.ReplyText, turn=1)
    await rig.speak("Hello.")  # one word: a turn, but shorter than barge_in_ms: the NPC goes on
    assert not running.cancelled
    assert rig.voice.preempted is None and rig.voice.preempt_stats.started == 0
    await rig.release()
    await rig.sent.first(msg.TurnEnd, turn=2)
    assert running.interrupted
    assert end_of(rig.sent, 2).preemptive is None


async def test_after_a_barge_in_the_reply_knows_the_cut_turn(make_voice: MakeVoice) -> None:
    rig = await make_voice(ScriptedChat([SLOW, DEFAULT_REPLY]))
    running = rig.session.start_turn("text", "Tell me about the forge.")
    await rig.sent.first(msg.ReplyAudio, turn=1)
    await rig.speak(LINE)  # long enough to barge in: the NPC's turn is cut, then the player falls silent
    assert running.interrupted
    spec = rig.preempted
    await rig.release()
    await rig.sent.first(msg.TurnEnd, turn=2)
    assert spec.id == 2 and end_of(rig.sent, 2).preemptive is True
    cut = end_of(rig.sent, 1)
    assert cut.status == "cancelled" and cut.text
    prompt = [m.content for m in rig.chat.calls[1].messages]
    assert "Tell me about the forge." in prompt, "the reply was asked with the cut turn in its history"
    assert any(m.startswith(cut.text) for m in prompt), "with what the player heard of it"


# ------------------------------------------------------------------ the pieces


def test_same_words_ignores_case_punctuation_and_spacing() -> None:
    assert same_words("Nice weather, today.", "  nice weather today")
    assert not same_words("Nice weather today.", "Nice weather today, friend.")
    assert not same_words("", "Nice")


def test_the_recognizer_hands_back_the_speculative_final_until_the_player_goes_on() -> None:
    ears = ToneTranscriber()
    rec = TurnRecognizer(EndOfTurnDetector(EnergyVad(), TurnConfig()), ears.open_stream())
    speech, pause = ears.say(HALF), np.zeros(int(0.2 * 16000), np.int16)
    assert rec.feed(speech).speculative is None
    assert rec.feed(pause).speculative == HALF
    # One batch holding the player's next words and a new silence: only the newer decode stands.
    update = rec.feed(np.concatenate([ears.say(REST), pause]))
    assert update.resumed() and update.speculative == f"{HALF} {REST}"
    # A batch in which the player falls silent and goes on again: no decode stands.
    update = rec.feed(np.concatenate([pause, ears.say("friend")]))
    assert update.resumed() and update.speculative is None
