"""A scene: one player and several characters in one conversation.

Each character present is a ``Session`` of its own (its memory, its guard, its voice, its
own llama.cpp slot so each keeps its KV cache), and they all share the scene's id and one
``Floor``: one character speaks at a time, turn ids run across the scene, and a new turn cuts
off whoever is speaking. The scene decides who answers the player (``routing``), owns the
microphone (it implements ``VoiceHooks``), tells the characters present what was said, and
plays reactions and banter. Nothing runs for a silent character: only the speaker's model
generates (each character's prompt is evaluated once when it joins, as for a session).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from npc_engine.characters import Character
from npc_engine.engine import Engine
from npc_engine.metrics import TurnClock
from npc_engine.protocol import outgoing as msg
from npc_engine.protocol.errors import ErrorCode, ProtocolError
from npc_engine.protocol.incoming import MAX_SCENE_CHARACTERS
from npc_engine.protocol.outgoing import Outgoing, TurnSource
from npc_engine.scene.routing import Choice, choose_answerer, reactor
from npc_engine.session.floor import Floor
from npc_engine.session.session import Mode, ModelAdmission, Session
from npc_engine.session.voice import VoiceInput, microphone
from npc_engine.story.state import Scalar
from npc_engine.tasks import BackgroundTasks
from npc_engine.turns.handle import TurnHandle
from npc_engine.turns.speech import Speakable

log = logging.getLogger(__name__)

# A banter's next line goes out this long before the game has finished playing the current
# one (its first chunk is ready by then), not as soon as the engine has sent the current one:
# the engine renders faster than the game plays, and a banter that ran ahead would be
# over, and remembered, before the player could cut in.
BANTER_LEAD_S = 0.3

Send = Callable[[Outgoing], None]
# Story lines the scene cannot say itself (a character who is not here), in order.
RouteLines = Callable[[str, Sequence[tuple[str, Speakable]]], None]


class Scene:
    def __init__(
        self,
        engine: Engine,
        scene_id: str,
        player: str,
        send: Send,
        *,
        audio: bool = True,
        mode: Mode = "push_to_talk",
        preemptive: bool = True,
        acks: bool = True,
        reactions: bool = True,
        route_lines: RouteLines | None = None,
        model_admission: ModelAdmission | None = None,
    ) -> None:
        self.engine = engine
        self.id = scene_id
        self.player = player
        self.mode = mode
        self.preemptive = preemptive and engine.cfg.preemptive
        self.reactions = reactions
        self.facing: str | None = None
        self.last_speaker: str | None = None
        self.floor = Floor()
        self.members: dict[str, Session] = {}  # in the scene's order
        self.closed = False
        self.voice_input: VoiceInput | None = None
        self._send = send
        self._audio = audio
        self._acks = acks
        self._route_lines = route_lines
        self._model_admission = model_admission
        self._tasks = BackgroundTasks(f"scene {scene_id}")
        # Preemptive replies: whose each is, and why that character answers (settled when the
        # player fell silent; the commit is for the same words).
        self._owners: dict[TurnHandle, tuple[Session, Choice]] = {}
        self._banter: asyncio.Task[None] | None = None
        self._reaction: asyncio.Task[None] | None = None
        self._story: asyncio.Task[None] | None = None  # story lines waiting for the floor
        self.answers: list[Choice] = []  # who answered each player line, and why (tests, logs)

    # ------------------------------------------------------------------ who is here

    @property
    def present(self) -> list[Character]:
        return [m.character for m in self.members.values()]

    def present_ids(self) -> list[str]:
        return list(self.members)

    @property
    def audio(self) -> bool:
        return any(m.audio for m in self.members.values())

    @property
    def current(self) -> TurnHandle | None:
        return self.floor.current

    @property
    def waiting_for_model(self) -> int:
        return sum(m.waiting_for_model for m in self.members.values())

    def has_character(self, character: str) -> bool:
        return character in self.members

    def member(self, character: str) -> Session:
        return self.members[character]

    def _new_member(self, character: Character) -> Session:
        return Session(
            self.engine, self.id, character, self.player, self._send,
            audio=self._audio, mode=self.mode, preemptive=False, acks=self._acks,
            route_lines=self._lines_from_member, model_admission=self._model_admission,
            floor=self.floor, affinity=f"{self.id}/{character.id}", on_turn_end=self._heard,
            present=self.present_ids,
        )

    async def open(self, characters: Sequence[Character], vars: Mapping[str, Scalar]) -> msg.SceneOpened:
        for character in characters:
            await self._join(character, vars)
        return await self.report(msg.SceneOpened)

    async def _join(self, character: Character, vars: Mapping[str, Scalar] | None = None) -> None:
        member = self._new_member(character)
        try:
            await member.open(vars or {})
        except Exception:
            await member.close()
            raise
        self.members[character.id] = member

    async def report(self, kind: type[msg.SceneOpened]) -> msg.SceneOpened:
        """``scene.opened`` / ``scene.updated`` / ``scene.resumed``: who is here, in which beat."""
        eng = self.engine
        state = await eng.story_state(self.player)
        chars: list[dict[str, str | None]] = []
        for m in self.members.values():
            beat = eng.story.active_beat(state, m.character.id)
            chars.append({"character": m.character.id, "name": m.character.name, "beat": beat.id if beat else None})
        audio = next((m for m in self.members.values() if m.audio), None)
        return kind(
            session=self.id, player=self.player, characters=chars, audio=audio is not None,
            sample_rate=audio.voice_out.voices[0].sample_rate if audio is not None else None,
            reactions=self.reactions, facing=self.facing,
            resumed=any(m.memory.history for m in self.members.values()) if kind is not msg.SceneUpdated else None,
        )

    async def update(
        self, *, facing: str | None, sets_facing: bool, reactions: bool | None, join: Sequence[Character],
        leave: Sequence[str],
    ) -> None:
        """``scene.update``: checked whole before anything changes (ProtocolError)."""
        for cid in leave:
            if cid not in self.members:
                raise ProtocolError(ErrorCode.INVALID_FIELD, f"leave: {cid!r} is not in this scene", session=self.id)
        for ch in join:
            if ch.id in self.members:
                raise ProtocolError(ErrorCode.INVALID_FIELD, f"join: {ch.id!r} is already in this scene", session=self.id)
        staying = [c for c in self.members if c not in leave] + [c.id for c in join]
        if len(staying) > MAX_SCENE_CHARACTERS:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, f"join: a scene holds at most {MAX_SCENE_CHARACTERS} characters",
                session=self.id,
            )
        if not staying:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, "a scene needs at least one character: close it (session.close) instead",
                session=self.id,
            )
        if sets_facing and facing is not None and facing not in staying:
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"facing: {facing!r} is not in this scene", session=self.id)
        if reactions is not None:
            self.reactions = reactions
        for cid in leave:
            await self._leave(cid)
        for ch in join:
            await self._join(ch)
            log.info("scene %s: %s joined", self.id, ch.id)
        if sets_facing:
            self.facing = facing
            if facing is not None:
                self.members[facing].prepare()  # the player turned to it: likely to speak to it next
        elif self.facing is not None and self.facing not in self.members:
            self.facing = None

    async def _leave(self, cid: str) -> None:
        member = self.members.pop(cid)
        if self._banter is not None and not self._banter.done():
            self._stop_banter()  # a dialogue does not go on without one of its speakers
        for turn, (owner, _) in list(self._owners.items()):
            if owner is member:
                self.drop_preemptive(turn)
        await member.close()  # cuts its turn if it is speaking (turn.end, cancelled, goes out)
        if self.last_speaker == cid:
            self.last_speaker = None
        if self.facing == cid:
            self.facing = None
        log.info("scene %s: %s left", self.id, cid)

    # ------------------------------------------------------------------ the player's lines

    def _answerer(self, text: str, forced: str | None) -> tuple[Session, Choice]:
        if forced is not None and forced not in self.members:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, f"character: {forced!r} is not in this scene (present: "
                f"{', '.join(self.members)})", session=self.id,
            )
        eng = self.engine
        state = eng.story_states.get(self.player)
        lead = eng.story.lead(state, self.present_ids()) if state is not None else None
        choice = choose_answerer(
            text, self.present, forced=forced, facing=self.facing, lead=lead, last=self.last_speaker,
        )
        return self.members[choice.character], choice

    def start_turn(
        self, source: TurnSource, text: str | None, *, clock: TurnClock | None = None,
        request_id: str | int | None = None, character: str | None = None,
    ) -> TurnHandle:
        """A player's line (or the opening greeting) to the scene: whoever it is for answers."""
        if source == "greeting":
            first = self.members[character] if character is not None else next(iter(self.members.values()))
            return first.start_turn("greeting", None, request_id=request_id)
        assert text is not None
        member, choice = self._answerer(text, character)
        self._player_spoke()
        turn = member.start_turn(source, text, clock=clock, request_id=request_id)
        self._answered(member, choice, turn, text)
        return turn

    def _answered(self, member: Session, choice: Choice, turn: TurnHandle, text: str) -> None:
        self.answers.append(choice)
        self.last_speaker = member.character.id
        log.info("scene %s: %s answers (%s)", self.id, member.character.id, choice.rule)
        if self.reactions and len(self.members) > 1:
            self._reaction = self._tasks.spawn(self._react(member, turn, text), "reaction")

    def _player_spoke(self) -> None:
        """The player has the scene's attention: banter and a pending reaction give way."""
        self._stop_banter()
        if self._reaction is not None and not self._reaction.done():
            self._reaction.cancel()

    async def _react(self, answerer: Session, turn: TurnHandle, text: str) -> None:
        """After the answer, one other character may add a remark, if the exchange concerns it."""
        await turn.wait()
        if turn.cancelled or turn.status == "error" or self.closed or self.floor.current is not None:
            return  # cut off, or someone (the player) has the floor already
        if not self.reactions:
            return  # turned off while the answer was being said
        who = reactor(text, turn.text, answerer.character.id, self.present)
        member = self.members.get(who) if who is not None else None
        if member is None:
            return
        prompt = (
            f'({self._player_label()} said to {answerer.character.name}: "{text}" '
            f'{answerer.character.name} answered: "{turn.text}" You are there too. '
            "Add one short remark of your own, in one sentence.)"
        )
        log.info("scene %s: %s reacts", self.id, member.character.id)
        reaction = member.start_turn("reaction", None, request_id=turn.request_id, prompt=prompt)
        await reaction.wait()

    # ------------------------------------------------------------------ what everyone heard

    def _player_label(self) -> str:
        state = self.engine.story_states.get(self.player)
        name = state.vars.get("player_name") if state is not None else None
        if not name:
            return "The stranger"
        name = str(name)
        # At the start of a sentence: "The traveller", "McAllister" (str.capitalize would lower the rest).
        label = name if name[:1].isupper() else f"the {name}"
        return label[:1].upper() + label[1:]

    async def _heard(self, speaker: Session, turn: TurnHandle, said: str) -> None:
        """A turn of ``speaker`` ended: the others present remember the player's line to it
        and its reply, as lines they overheard (absent characters learn nothing)."""
        lines = []
        if turn.user_text and turn.source in ("text", "voice"):
            lines.append(f'[{self._player_label()} said to {speaker.character.name}: "{turn.user_text}"]')
        if said:
            lines.append(f'[{speaker.character.name} said: "{said}"]')
        if not lines:
            return
        for other in list(self.members.values()):
            if other is not speaker:
                await other.hear("\n".join(lines))

    # ------------------------------------------------------------------ story lines

    def _lines_from_member(self, player: str, lines: Sequence[tuple[str, Speakable]]) -> None:
        """Story lines a character's turn gave to others: those present say them here, in
        order, once the floor is free; the rest go to their own sessions (the server)."""
        here = [(c, s) for c, s in lines if c in self.members]
        away = [(c, s) for c, s in lines if c not in self.members]
        if away and self._route_lines is not None:
            self._route_lines(player, away)
        if here:
            self.say_lines(here)

    def say_lines(self, lines: Sequence[tuple[str, Speakable]]) -> None:
        """Scripted lines for characters present, said one speaker after another (a
        multi-character exchange keeps its order), each after the turn before has ended."""
        previous = self._story
        self._story = self._tasks.spawn(self._say_lines(list(lines), previous), "story-lines")

    async def _say_lines(self, lines: list[tuple[str, Speakable]], previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.shield(previous)
        runs: list[tuple[str, list[Speakable]]] = []
        for character, line in lines:
            if runs and runs[-1][0] == character:
                runs[-1][1].append(line)
            else:
                runs.append((character, [line]))
        for character, said in runs:
            current = self.floor.current
            if current is not None:
                await current.wait()
            member = self.members.get(character)
            if member is None or self.closed:
                continue
            turn = member.start_turn("story", None, scripted=said)
            await turn.wait()

    # ------------------------------------------------------------------ banter

    def banter(
        self, *, request_id: str | int | None, topic: str | None, beat: str | None, characters: Sequence[str] | None,
        lines: int,
    ) -> None:
        """``scene.banter``: checked here (ProtocolError), then played in the background."""
        eng = self.engine
        if not topic and not beat:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "scene.banter needs a 'topic' or a 'beat'", session=self.id)
        speakers = list(characters) if characters else self.present_ids()[:2]
        missing = [c for c in speakers if c not in self.members]
        if missing:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, f"characters: {', '.join(map(repr, missing))} not in this scene", session=self.id,
            )
        if len(set(speakers)) < 2:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "a banter needs two characters in the scene", session=self.id)
        script: list[tuple[str, Speakable]] = []
        if beat is not None:
            story_beat = eng.story.beats.get(beat)
            if story_beat is None:
                raise ProtocolError(ErrorCode.INVALID_FIELD, f"beat: the story has no beat {beat!r}", session=self.id)
            for line in story_beat.lines:
                who = line.character or story_beat.speaker
                if who not in self.members:
                    raise ProtocolError(
                        ErrorCode.INVALID_FIELD, f"beat {beat!r} has a line for {who!r}, who is not in this scene",
                        session=self.id,
                    )
                script.append((who, self.members[who].scripted_line(line)))
            topic = topic or story_beat.objective
            if not script and not topic:
                raise ProtocolError(ErrorCode.INVALID_FIELD, f"beat {beat!r} has no lines and no objective", session=self.id)
        self._player_spoke()  # one banter at a time: a new one replaces it
        self._banter = self._tasks.spawn(
            self._play_banter(request_id, speakers, topic or "", script, lines), "banter"
        )

    def _stop_banter(self) -> None:
        if self._banter is not None and not self._banter.done():
            self._banter.cancel()

    async def _play_banter(
        self, request_id: str | int | None, speakers: list[str], topic: str,
        script: list[tuple[str, Speakable]], count: int,
    ) -> None:
        """Line by line, each its own turn in its speaker's voice. The next line is started
        (speculatively: the model writes it and its first chunk is synthesized, held back)
        as soon as the current line's text is complete, and goes out when it has ended."""
        said = 0
        interrupted = False
        pending: TurnHandle | None = None
        pending_owner: Session | None = None
        previous: TurnHandle | None = None
        played_by = 0.0  # when the game will have played what was sent so far (monotonic, estimated)
        plan: list[tuple[str, Speakable | None]] = (
            list(script) if script else [(speakers[i % len(speakers)], None) for i in range(count)]
        )
        try:
            current = self.floor.current
            if current is not None:  # what was being said ends first (cut off)
                current.cancel()
                await current.wait()
            for i, (who, line) in enumerate(plan):
                member = self.members.get(who)
                if member is None:
                    interrupted = True
                    break
                if previous is not None:
                    await previous.text_done.wait()
                if line is not None:
                    turn = member.start_turn("banter", None, request_id=request_id, scripted=[line], speculative=True)
                else:
                    prompt = self._banter_prompt(member, plan, i, previous, topic)
                    turn = member.start_turn("banter", None, request_id=request_id, prompt=prompt, speculative=True)
                pending, pending_owner = turn, member
                if previous is not None:
                    await previous.wait()
                    if previous.cancelled:  # the player (or a cancel) cut the dialogue
                        interrupted = True
                        break
                    played_by += previous.delivered.audio_seconds
                    await _until(played_by - BANTER_LEAD_S)
                pending = None
                await member.commit_turn(turn)
                played_by = max(played_by, time.monotonic())  # it starts playing now, or after the line before
                self.last_speaker = who
                said += 1
                previous = turn
            if previous is not None and not interrupted:
                await previous.wait()
                interrupted = previous.cancelled
                if not interrupted:  # over when the game has played it: the player may still cut in
                    await _until(played_by + previous.delivered.audio_seconds)
        except asyncio.CancelledError:
            interrupted = True
            raise
        finally:
            if pending is not None and pending.speculative and pending_owner is not None:
                pending_owner.drop_turn(pending)
            if previous is not None and not previous.done:
                # The line being said was cut: its turn.end goes first, then banter.end (a
                # second cancel, closing the scene, skips the wait and banter.end with it).
                await previous.wait()
            self._send(msg.BanterEnd(id=request_id, session=self.id, lines=said, interrupted=interrupted))
            log.info("scene %s: banter over, %d line(s)%s", self.id, said, ", interrupted" if interrupted else "")

    def _banter_prompt(
        self, member: Session, plan: list[tuple[str, Speakable | None]], i: int, previous: TurnHandle | None,
        topic: str,
    ) -> str:
        others = [self.members[c].character.name for c, _ in plan if c != member.character.id and c in self.members]
        other = others[0] if others else "them"
        if previous is None or not previous.text:
            return (
                f"(You are with {other}, and the player is listening. Talk to {other} about this: "
                f"{topic.strip().rstrip('.')}. Say one or two sentences to {other}.)"
            )
        prev_name = next((m.character.name for m in self.members.values() if m.owns(previous)), other)
        return f'({prev_name} says to you: "{previous.text}" Answer {prev_name} in one or two sentences.)'

    # ------------------------------------------------------------------ cancel, close

    def cancel(self, turn_id: int | None = None, heard: float | None = None) -> None:
        self._player_spoke()
        self._drop_preempted()
        current = self.floor.current or self.floor.last_turn
        owner = next((m for m in self.members.values() if current is not None and m.owns(current)), None)
        if owner is not None:
            owner.cancel(turn_id, heard)

    async def cancel_and_wait(self) -> None:
        self._player_spoke()
        self._drop_preempted()
        for member in self.members.values():
            await member.cancel_and_wait()
        if self._story is not None and not self._story.done():
            self._story.cancel()

    async def reload_memory(self) -> None:
        for member in self.members.values():
            await member.memory.load()

    async def close(self) -> None:
        self.closed = True
        self._player_spoke()
        if self.voice_input is not None:
            await self.voice_input.close()
        self._drop_preempted()
        await self._tasks.cancel_all()
        for member in list(self.members.values()):
            await member.close()

    # ------------------------------------------------------------------ voice in (VoiceHooks)

    def audio_in(self, pcm: bytes) -> None:
        self._voice().push(pcm)

    def audio_end(self) -> None:
        self._voice().end()

    def _voice(self) -> VoiceInput:
        if self.voice_input is None:
            self.voice_input = microphone(
                self.engine, self, push_to_talk=self.mode == "push_to_talk", preemptive=self.preemptive
            )
        return self.voice_input

    def npc_speaking(self) -> bool:
        turn = self.floor.current
        return turn is not None and not turn.cancelled

    def barge_in(self) -> None:
        self._player_spoke()
        turn = self.floor.current
        if turn is not None and not turn.cancelled:
            log.info("scene %s: barge-in, the player spoke over turn %s", self.id, turn.id)
            turn.cancel()

    def transcript(self, text: str, final: bool, utterance: int) -> None:
        self._send(msg.Transcript(session=self.id, text=text, final=final, utterance=utterance))
        if not final and text.strip():
            # The player is still speaking: whoever the line so far goes to (named, faced, the
            # lead, the last speaker) has its prompt evaluated up to the words heard so far
            # (the lines it overheard come with them) while they finish it.
            member, _ = self._answerer(text, None)
            member.prepare_line(text)

    def player_turn_ended(self, text: str, clock: TurnClock) -> None:
        self.start_turn("voice", text, clock=clock)

    def start_preemptive(self, text: str) -> TurnHandle | None:
        member, choice = self._answerer(text, None)
        turn = member.start_preemptive(text)
        if turn is not None:
            self._owners[turn] = (member, choice)
        return turn

    def commit_preemptive(self, turn: TurnHandle, clock: TurnClock) -> None:
        owner = self._owners.pop(turn, None)
        if owner is None:
            return
        member, choice = owner
        self._player_spoke()
        member.commit_preemptive(turn, clock)
        self._answered(member, choice, turn, turn.user_text or "")

    def drop_preemptive(self, turn: TurnHandle) -> None:
        owner = self._owners.pop(turn, None)
        if owner is not None and turn.speculative:
            owner[0].drop_preemptive(turn)

    def _drop_preempted(self) -> None:
        """Every preemptive reply not yet decided (a cancel, a load, closing)."""
        for turn in list(self._owners):
            self.drop_preemptive(turn)

    def report_error(self, code: ErrorCode, message: str) -> None:
        self._send(msg.Error(session=self.id, code=code.value, message=message))


async def _until(when: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``when`` (at once if it has)."""
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def scene_characters(engine: Engine, ids: Sequence[str], request_id: str | int | None, request_type: str) -> list[Character]:
    """The characters ``ids`` names, or ``unknown_character`` / ``invalid_field`` (repeated)."""
    unknown = [c for c in ids if c not in engine.characters]
    if unknown:
        known = ", ".join(sorted(engine.characters)) or "none loaded"
        raise ProtocolError(
            ErrorCode.UNKNOWN_CHARACTER, f"unknown character {unknown[0]!r}; known characters: {known}",
            request_id=request_id, request_type=request_type,
        )
    if len(set(ids)) != len(ids):
        raise ProtocolError(
            ErrorCode.INVALID_FIELD, "characters: each character at most once", request_id=request_id,
            request_type=request_type,
        )
    return [engine.characters[c] for c in ids]


__all__ = ["Scene", "scene_characters"]
