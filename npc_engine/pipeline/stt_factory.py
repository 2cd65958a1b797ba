"""Pick a speech recognizer by name: ``make_transcriber("whisper" | "moonshine" | "vosk", **opts)``.

``opts`` are the fields of the backend's config dataclass (``WhisperConfig``,
``MoonshineConfig``, ``VoskConfig``); unknown ones are an error naming the
valid ones. Backends are imported lazily so a missing optional engine only
matters when it is chosen.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from npc_engine.pipeline.base import Transcriber

TRANSCRIBERS: tuple[str, ...] = ("whisper", "moonshine", "vosk")
DEFAULT_TRANSCRIBER = "whisper"  # measured choice: see docs/stt.md


def make_transcriber(name: str = DEFAULT_TRANSCRIBER, **opts: Any) -> Transcriber:
    """Load the named recognizer (blocking: model loads take 0.4–3 s)."""
    key = name.strip().lower()
    if key == "whisper":
        from npc_engine.pipeline.stt_whisper import WhisperConfig, WhisperTranscriber

        return WhisperTranscriber(_config(WhisperConfig, name, opts))
    if key == "moonshine":
        from npc_engine.pipeline.stt_moonshine import MoonshineConfig, MoonshineTranscriber

        return MoonshineTranscriber(_config(MoonshineConfig, name, opts))
    if key == "vosk":
        from npc_engine.pipeline.stt_vosk import VoskConfig, VoskTranscriber

        return VoskTranscriber(_config(VoskConfig, name, opts))
    raise ValueError(f"Unknown speech recognizer {name!r}; choose one of: {', '.join(TRANSCRIBERS)}.")


def _config(cls: type[Any], name: str, opts: dict[str, Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(opts) - fields)
    if unknown:
        raise ValueError(
            f"Unknown option(s) {', '.join(unknown)} for the {name} recognizer; "
            f"valid options: {', '.join(sorted(fields))}."
        )
    if "phrases" in opts and opts["phrases"] is not None:
        opts = {**opts, "phrases": tuple(opts["phrases"])}
    return cls(**opts)
