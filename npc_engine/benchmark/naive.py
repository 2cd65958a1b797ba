"""The naive baseline: the same models, one after another, each on its whole input.

Whole clip -> the same recognizer's ``transcribe`` -> the whole LLM reply (same prompt as
the session would build, same max tokens, the same sentence cap and cue stripping, read
to its end before going on) -> one Kokoro call on the whole reply. Its time to first audio
is the time until that whole-reply audio exists: nothing can play before it. No sockets,
no threads: this is what the streaming pipeline is measured against.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from npc_engine.characters import Character
from npc_engine.config import EngineConfig
from npc_engine.pipeline.base import ChatModel, GenOptions, Synthesizer, Transcriber, Voice
from npc_engine.pipeline.chunker import ClauseChunker
from npc_engine.pipeline.cues import CueParser
from npc_engine.pipeline.prompt import build_messages, system_prompt
from npc_engine.store import HistoryEntry
from npc_engine.story import Story, StoryState

log = logging.getLogger(__name__)


@dataclass
class NaiveResult:
    session: int
    character: str
    kind: str
    said: str
    heard: str | None = None
    stt_ms: float = 0.0  # whole-clip transcription (voice turns)
    llm_ms: float = 0.0  # whole reply
    tts_ms: float = 0.0  # one synthesis call on the whole reply
    ttfa_ms: float = 0.0  # sum: the end of the player's turn -> the whole reply's audio exists
    tokens: int = 0
    audio_seconds: float = 0.0
    reply_text: str = ""
    scripted: bool = False  # the story answered with a line (not a model turn; kept apart)
    stages: dict[str, float] = field(default_factory=dict)
    index: int = 0  # the plan position of the streaming turn it pairs with

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class NaiveSession:
    """A player's conversation with one character, as the session would keep it."""

    character: Character
    state: StoryState
    history: list[HistoryEntry] = field(default_factory=list)


def transcribe_whole(transcriber: Transcriber, pcm: Any) -> str:
    """One decode of the whole clip: the recognizer's ``transcribe`` where it has one, else
    its stream fed everything at once and finalized."""
    whole = getattr(transcriber, "transcribe", None)
    if whole is not None:
        return str(whole(pcm)).strip()
    stream = transcriber.open_stream()
    stream.accept(pcm)
    return stream.finalize().strip()


class NaivePipeline:
    def __init__(
        self, cfg: EngineConfig, characters: dict[str, Character], story: Story,
        chat: ChatModel, synth: Synthesizer, transcriber: Transcriber | None,
    ) -> None:
        self.cfg = cfg
        self.characters = characters
        self.story = story
        self.chat = chat
        self.synth = synth
        self.transcriber = transcriber

    @classmethod
    def load(cls, cfg: EngineConfig) -> NaivePipeline:
        """Load the engine's models as ``cfg`` says (one llama.cpp slot with a slot's context)."""
        from npc_engine.engine import make_synthesizer, make_transcriber
        from npc_engine.pipeline.llm_llamacpp import LlamaCppChat
        from npc_engine.world import load_world

        characters, story = load_world(cfg.characters, cfg.story)
        if cfg.llm == "embedded":
            # The sidecar gives each of its slots llm_ctx / llm_slots tokens; so does this one slot.
            chat: ChatModel = LlamaCppChat(cfg.llm_model, n_ctx=max(512, cfg.llm_ctx // max(1, cfg.llm_slots)),
                                           n_parallel=1, threads=cfg.llm_threads)
        else:
            from npc_engine.engine import make_chat_model

            chat = make_chat_model(cfg)
        synth = make_synthesizer(cfg)
        if synth is None:
            raise ValueError("the naive baseline needs a synthesizer; run the benchmark with --tts kokoro or espeak")
        synth.warm_up()
        transcriber = make_transcriber(cfg)
        if transcriber is not None:
            transcriber.warm_up()
        return cls(cfg, characters, story, chat, synth, transcriber)

    def open(self, character: str) -> NaiveSession:
        return NaiveSession(self.characters[character], self.story.initial_state({}))

    def remember(self, sess: NaiveSession, user_text: str | None, npc_text: str) -> None:
        """Append an exchange to the history (the benchmark feeds it the streaming session's,
        so both paths see the same prompt)."""
        if user_text:
            sess.history.append(HistoryEntry("user", user_text))
        if npc_text:
            sess.history.append(HistoryEntry("assistant", npc_text))

    def messages(self, sess: NaiveSession, user_text: str) -> list[Any]:
        """The prompt ``Session._messages`` builds: persona, revealed secrets, objective, facts, history."""
        ch, state, cid = sess.character, sess.state, sess.character.id
        revealed = [s.text for s in ch.secrets if s.reveal_when and self.story.condition_true(s.reveal_when, state, cid)]
        facts = [f"The player's name is {state.vars['player_name']}."] if state.vars.get("player_name") else []
        system = system_prompt(ch, self.story.objective(state, cid), revealed, facts)
        return build_messages(system, sess.history, user_text, self.cfg.history_turns)

    def warm(self, sess: NaiveSession) -> None:
        """What session.open does: evaluate the persona prompt so the first turn is not a cold one."""
        self.chat.warm_up(self.messages(sess, "Hello.")[:1])

    def warm_voices(self, characters: list[str]) -> None:
        """First synthesis in each character's voice (loads its pack and lexicon), untimed."""
        for cid in characters:
            ch = self.characters[cid]
            self.synth.synthesize("Good day to you.", Voice(ch.voice.id, ch.voice.speed))

    def reply_text(self, sess: NaiveSession, user_text: str) -> tuple[str, int]:
        """The whole reply, as the session would speak it: cues stripped, cut at the sentence cap."""
        ch = sess.character
        opts = GenOptions(max_tokens=ch.reply.max_tokens, temperature=self.cfg.temperature)
        parser = CueParser(ch.emotions, ch.gestures, ch.actions, speaker_names=[ch.name, ch.id])
        chunker = ClauseChunker()
        clauses: list[str] = []
        tokens = 0
        sentences = 0
        capped = False
        for delta in self.chat.stream(self.messages(sess, user_text), opts, threading.Event()):
            tokens += 1
            parsed = parser.feed(delta)
            for clause in chunker.feed(parsed.text) if parsed.text else []:
                clauses.append(clause)
                sentences += clause.rstrip().endswith((".", "!", "?"))
            if sentences >= ch.reply.max_sentences:
                capped = True
                break
        if not capped:
            tail = parser.flush()
            clauses += (chunker.feed(tail.text) if tail.text else []) + chunker.flush()
        return " ".join(c.strip() for c in clauses if c.strip()), tokens

    def run_turn(self, sess: NaiveSession, session_index: int, kind: str, said: str, pcm: Any | None) -> NaiveResult:
        ch = sess.character
        res = NaiveResult(session_index, ch.id, kind, said)
        t0 = time.perf_counter()
        if kind == "voice":
            if self.transcriber is None:
                raise ValueError("voice turns need a recognizer; run the benchmark with --stt whisper")
            user_text = transcribe_whole(self.transcriber, pcm)
        else:
            user_text = said
        t1 = time.perf_counter()
        res.heard = user_text
        effects = self.story.on_player_line(sess.state, ch.id, user_text) if user_text else []
        res.scripted = any(getattr(e, "kind", None) == "say_line" and getattr(e, "character", None) == ch.id
                           for e in effects)
        text, res.tokens = self.reply_text(sess, user_text) if user_text else ("", 0)
        t2 = time.perf_counter()
        if text:
            speech = self.synth.synthesize(text, Voice(ch.voice.id, ch.voice.speed))
            res.audio_seconds = round(speech.duration, 3)
        t3 = time.perf_counter()
        res.reply_text = text
        res.stt_ms = round((t1 - t0) * 1000, 2)
        res.llm_ms = round((t2 - t1) * 1000, 2)
        res.tts_ms = round((t3 - t2) * 1000, 2)
        res.ttfa_ms = round((t3 - t0) * 1000, 2)
        res.stages = {"stt": res.stt_ms, "llm": res.llm_ms, "tts": res.tts_ms} if kind == "voice" else {
            "llm": res.llm_ms, "tts": res.tts_ms}
        return res

    def close(self) -> None:
        self.chat.close()
