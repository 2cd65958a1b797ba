"""``npc-engine say CHARACTER "text" -o out.wav``: render a line in a character's voice.

Writes the WAV (PCM16 mono 24 kHz) and, beside it, ``out.json`` with the viseme
and word tracks (seconds from the start of the audio), which is handy for
checking lip sync in a game engine without running the sidecar.

CHARACTER is a character id (``characters/<id>.yaml``), a path to a character
file, or a raw voice id (``af_heart``); ``--voice``/``--speed`` override it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import wave
from pathlib import Path

import yaml

from npc_engine.pipeline.base import SpeechChunk, Synthesizer, Voice
from npc_engine.pipeline.chunker import ClauseChunker
from npc_engine.pipeline.tts_kokoro import VOICES_DIR

log = logging.getLogger(__name__)


class SayError(Exception):
    """A problem the user can fix (unknown character, bad voice); printed as one sentence."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("character", help="character id, character YAML file, or a voice id (af_heart)")
    parser.add_argument("text", help="the line to speak")
    parser.add_argument("-o", "--output", type=Path, default=Path("out.wav"),
                        help="WAV file to write (default out.wav); the tracks go to the same name .json")
    parser.add_argument("--voice", help="voice id to use instead of the character's")
    parser.add_argument("--speed", type=float, help="speaking-rate multiplier (0.5-2.0)")
    parser.add_argument("--characters-dir", type=Path, default=Path("characters"),
                        help="where character files live (default ./characters)")
    parser.add_argument("--backend", choices=("kokoro", "espeak"), default="kokoro",
                        help="kokoro (natural, default) or espeak (the robotic fallback)")
    parser.add_argument("--cache-dir", type=Path, help="model cache (default $NPC_ENGINE_CACHE_DIR or ~/.cache/npc-engine)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for Kokoro (default 1)")


def run(args: argparse.Namespace) -> int:
    try:
        voice = resolve_voice(args.character, args.characters_dir, args.voice, args.speed)
        text = speakable(args.text)
        if not text:
            raise SayError(f"nothing to say in {args.text!r}.")
        synth = _make_synth(args)
        started = time.perf_counter()
        chunk = synth.synthesize(text, voice)
        elapsed = time.perf_counter() - started
    except SayError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # unknown voice, speed out of range
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not len(chunk.pcm):
        print(f"error: nothing to say in {args.text!r}.", file=sys.stderr)
        return 2
    tracks = write_outputs(chunk, voice, args.output)
    print(f"wrote {args.output} ({chunk.duration:.2f} s, {voice.id} x{voice.speed:g}, "
          f"rendered in {elapsed:.2f} s) and {tracks}")
    return 0


def speakable(text: str) -> str:
    """``text`` as the voice would get it in a reply: cue markup ([...], *...*, <...>) removed."""
    chunker = ClauseChunker()
    return " ".join([*chunker.feed(text), *chunker.flush()])


def resolve_voice(who: str, characters_dir: Path, voice_id: str | None = None,
                  speed: float | None = None) -> Voice:
    """The voice for ``who`` (character id, character file or voice id), with overrides applied."""
    base = _character_voice(who, characters_dir)
    if base is None:
        if voice_id is None and not (VOICES_DIR / f"{who}.bin").is_file():
            raise SayError(f"{who!r} is neither a character in {characters_dir} nor a voice id "
                           f"({', '.join(sorted(p.stem for p in VOICES_DIR.glob('*.bin')))}).")
        base = Voice(voice_id or who)
    return Voice(voice_id or base.id, base.speed if speed is None else speed)


def _character_file(who: str, characters_dir: Path) -> Path | None:
    candidates = [Path(who)] if who.endswith((".yaml", ".yml")) else []
    candidates += [characters_dir / f"{who}.yaml", characters_dir / f"{who}.yml"]
    return next((p for p in candidates if p.is_file()), None)


def _character_voice(who: str, characters_dir: Path) -> Voice | None:
    path = _character_file(who, characters_dir)
    if path is None:
        return None
    try:
        from npc_engine.characters import read_character
    except ImportError:  # the character loader is optional here: only the voice is needed
        return _yaml_voice(path)
    character, problems = read_character(path)
    if character is None:
        raise SayError(f"{path} has errors:\n  " + "\n  ".join(str(p) for p in problems))
    return Voice(character.voice.id, character.voice.speed)


def _yaml_voice(path: Path) -> Voice:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise SayError(f"cannot read {path}: {error}") from error
    voice = data.get("voice") if isinstance(data, dict) else None
    if isinstance(voice, str):
        return Voice(voice)
    if not isinstance(voice, dict) or not isinstance(voice.get("id"), str):
        raise SayError(f"{path} has no 'voice:' mapping like {{id: bm_george, speed: 1.0}}.")
    try:
        return Voice(voice["id"], float(voice.get("speed", 1.0)))
    except (TypeError, ValueError) as error:
        raise SayError(f"{path}: voice speed must be a number ({error}).") from error


def _make_synth(args: argparse.Namespace) -> Synthesizer:
    if args.backend == "espeak":
        from npc_engine.pipeline.tts_espeak import EspeakSynthesizer

        return EspeakSynthesizer()
    from npc_engine.pipeline.tts_kokoro import KokoroConfig, KokoroSynthesizer

    return KokoroSynthesizer(KokoroConfig(cache_dir=args.cache_dir, intra_op_threads=args.threads))


def write_outputs(chunk: SpeechChunk, voice: Voice, output: Path) -> Path:
    """Write ``output`` (WAV) and its ``.json`` tracks; returns the JSON path."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(output), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(chunk.sample_rate)
        wav.writeframes(chunk.pcm.astype("<i2").tobytes())
    tracks = output.with_suffix(".json")
    tracks.write_text(json.dumps({
        "text": chunk.text,
        "voice": {"id": voice.id, "speed": voice.speed},
        "sample_rate": chunk.sample_rate,
        "duration": chunk.duration,
        "visemes": [{"label": v.label, "start": round(v.start, 4), "end": round(v.end, 4)} for v in chunk.visemes],
        "words": [{"word": w.label, "start": round(w.start, 4), "end": round(w.end, 4)} for w in chunk.words],
    }, ensure_ascii=False, indent=1), encoding="utf-8")
    return tracks


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m npc_engine.cli.say`` (the CLI runs it as ``npc-engine say``)."""
    parser = argparse.ArgumentParser(prog="npc-engine say", description=__doc__.splitlines()[0])
    configure(parser)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
