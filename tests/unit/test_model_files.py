"""Joining model parts into the cache: verified, atomic, and rebuilt when the cached file went bad.

Synthetic parts in a temporary folder go through the same helper the Kokoro model and the LLM
profiles use (``npc_engine.pipeline.model_files``); no model is involved.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from npc_engine.pipeline.base import ModelError
from npc_engine.pipeline.llm_profiles import INSTALL_HINT, LlmProfile, profile_path, resolve_model, status
from npc_engine.pipeline.model_files import (
    Part,
    PartedModel,
    ensure_joined,
    ensure_verified,
    is_cached,
    stamp_path,
)

CHUNKS = [bytes([i]) * (300_000 + 1000 * i) for i in range(1, 4)]


def _model(tmp_path: Path) -> tuple[PartedModel, list[Path]]:
    paths = []
    for i, data in enumerate(CHUNKS, start=1):
        path = tmp_path / "parts" / f"part{i:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    parts = tuple(
        Part(f"synthetic_part{i}", f"synthetic-part{i}", "1.0", p.name, hashlib.sha256(d).hexdigest())
        for i, (p, d) in enumerate(zip(paths, CHUNKS, strict=True), start=1)
    )
    model = PartedModel("the synthetic model", hashlib.sha256(b"".join(CHUNKS)).hexdigest(), parts)
    return model, paths


def _flip_one_byte_in_place(path: Path) -> None:
    """Corrupt a file the way a cheap check cannot see: same size, same mtime."""
    st = path.stat()
    with path.open("r+b") as fh:
        fh.seek(12345)
        byte = fh.read(1)
        fh.seek(12345)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_parts_are_joined_once_then_trusted(tmp_path: Path) -> None:
    model, parts = _model(tmp_path)
    target = tmp_path / "cache" / "model.gguf"
    assert ensure_joined(model, parts, target) is True
    assert target.read_bytes() == b"".join(CHUNKS)
    assert is_cached(parts, target)
    assert ensure_joined(model, parts, target) is False, "a second start must not rebuild"
    assert ensure_joined(model, parts, target, verify=True) is False, "an intact file passes the full check"


def test_a_rewritten_cached_join_is_detected_and_rebuilt(tmp_path: Path) -> None:
    model, parts = _model(tmp_path)
    target = tmp_path / "cache" / "model.gguf"
    ensure_joined(model, parts, target)
    target.write_bytes(b"truncated")  # a new size and mtime: the stamp no longer matches
    assert not is_cached(parts, target)
    assert ensure_joined(model, parts, target) is True
    assert hashlib.sha256(target.read_bytes()).hexdigest() == model.sha256


def test_bytes_flipped_in_place_are_caught_by_the_full_check_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, parts = _model(tmp_path)
    target = tmp_path / "cache" / "model.gguf"
    ensure_joined(model, parts, target)
    _flip_one_byte_in_place(target)
    assert is_cached(parts, target), "the cheap check trusts the stamp (that is what verify is for)"
    with caplog.at_level(logging.WARNING):
        assert ensure_joined(model, parts, target, verify=True) is True
    assert "rebuilding" in caplog.text
    assert hashlib.sha256(target.read_bytes()).hexdigest() == model.sha256


def test_a_reinstalled_part_rebuilds_the_join(tmp_path: Path) -> None:
    model, parts = _model(tmp_path)
    target = tmp_path / "cache" / "model.gguf"
    ensure_joined(model, parts, target)
    parts[1].write_bytes(CHUNKS[1])  # same bytes, new mtime: pip reinstalled it
    assert ensure_joined(model, parts, target) is True


def test_a_corrupt_part_is_named_and_leaves_nothing_behind(tmp_path: Path) -> None:
    model, parts = _model(tmp_path)
    parts[2].write_bytes(CHUNKS[2][:-1] + b"\x00")
    target = tmp_path / "cache" / "model.gguf"
    with pytest.raises(ModelError) as info:
        ensure_joined(model, parts, target)
    assert "part 3/3" in str(info.value)
    assert "synthetic-part3==1.0" in str(info.value)
    assert list(target.parent.iterdir()) == [], "no joined file, stamp or temporary file may remain"


def test_a_one_file_model_is_hashed_once_then_trusted_until_it_changes(tmp_path: Path) -> None:
    data = b"gguf" * 100_000
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    part = Part("m", "m", "1", "model.gguf", hashlib.sha256(data).hexdigest())
    model = PartedModel("the one-file model", part.sha256, (part,))
    stamp = tmp_path / "cache" / "model.parts.json"
    assert ensure_verified(model, path, stamp) is True
    assert ensure_verified(model, path, stamp) is False
    _flip_one_byte_in_place(path)
    with pytest.raises(ModelError, match="part 1/1"):
        ensure_verified(model, path, stamp, verify=True)


def test_a_profile_that_is_not_installed_says_how_to_install_it(tmp_path: Path) -> None:
    """Fake fault: the profile names parts whose packages do not exist."""
    parts = tuple(Part(f"npc_engine_no_such_part{i}", f"no-such-part{i}", "0.1", "data/x.bin", "0" * 64) for i in (1, 2))
    profile = LlmProfile("absent", "Nothing-0B", "nothing.gguf", "0" * 64, 1, 1, "none", "nowhere", parts, "")
    with pytest.raises(ModelError) as info:
        profile_path(profile, cache_dir=tmp_path)
    message = str(info.value)
    assert info.value.code == "model_unavailable"
    assert "`absent` LLM profile" in message and "no-such-part1==0.1, no-such-part2==0.1" in message
    assert INSTALL_HINT in message and "make install" in message and "--require-hashes" in message
    assert status(profile).missing == parts


def test_llm_model_is_a_profile_or_an_existing_file(tmp_path: Path) -> None:
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(str(gguf)) == gguf
    with pytest.raises(ModelError, match=r"neither a profile \(fast, balanced, quality\)"):
        resolve_model("qualty")


def test_the_stamp_sits_next_to_the_joined_file(tmp_path: Path) -> None:
    assert stamp_path(tmp_path / "qwen2.5-coder-0.5b-x.gguf") == tmp_path / "qwen2.5-coder-0.5b-x.parts.json"
