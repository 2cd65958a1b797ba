"""The LLM profiles on the real installed packages: verified files, and a real reply from Qwen.

The set-up installs every profile (requirements-models.txt); a profile whose packages are
missing is skipped with the reason, not failed, so a partial install can still run the rest.
"""

from __future__ import annotations

import multiprocessing
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from multiprocessing.synchronize import Event as MpEvent

import pytest

from npc_engine.characters import load_characters
from npc_engine.pipeline.base import ChatMessage, GenOptions
from npc_engine.pipeline.llm_llamacpp import LlamaCppChat
from npc_engine.pipeline.llm_profiles import PROFILES, LlmProfile, locate, profile_path, status
from npc_engine.pipeline.prompt import build_messages, system_prompt
from tests.harness import REPO

# What a reply must never carry: ChatML and other chat-template tokens, or a role label
# that shows the template was not applied.
TEMPLATE_TOKENS = re.compile(r"<\|[a-z_]+\|>|^\s*(assistant|system|user)\s*[:\n]", re.IGNORECASE)


def _installed(profile: LlmProfile) -> LlmProfile:
    _, missing = locate(profile)
    if missing:
        pytest.skip(f"the `{profile.name}` profile is not installed ({missing[0].requirement} missing): "
                    "run `make install` (scripts/install.sh installs requirements-models.txt)")
    return profile


@pytest.mark.parametrize("name", list(PROFILES))
def test_each_installed_profile_resolves_to_its_verified_file(name: str) -> None:
    """The cheap check only: a cache hit (or one join, which hashes every byte)."""
    profile = _installed(PROFILES[name])
    path = profile_path(profile)
    assert path.stat().st_size == profile.size
    st = status(profile)
    assert st.verified, f"{path} is not stamped as verified against sha256 {profile.sha256[:12]}…"
    assert st.path == path


@pytest.fixture(scope="module")
def balanced() -> Iterator[LlamaCppChat]:
    _installed(PROFILES["balanced"])
    chat = LlamaCppChat("balanced", n_ctx=2048, n_parallel=1, threads=1)
    yield chat
    chat.close()


def test_balanced_profile_answers_in_plain_text(balanced: LlamaCppChat) -> None:
    """One real generation with Qwen2.5-0.5B on the engine's prompt: the GGUF's own (ChatML)
    template is applied and its end token stops the reply, so no template token leaks."""
    bram = load_characters(REPO / "characters")["bram"]
    messages = build_messages(system_prompt(bram, None, ()), [], "Good morning! What are you working on?", 6)
    reply = "".join(balanced.stream(messages, GenOptions(max_tokens=60, temperature=0.0), threading.Event()))
    assert reply.strip(), "the model said nothing"
    assert not TEMPLATE_TOKENS.search(reply), f"chat-template tokens in the reply: {reply!r}"
    timings = balanced.last_timings
    assert timings is not None
    assert 0 < timings["predicted_n"] <= 60


def test_balanced_profile_keeps_the_persona_prefix_cached(balanced: LlamaCppChat) -> None:
    bram = load_characters(REPO / "characters")["bram"]
    system = system_prompt(bram, None, ())
    balanced.warm_up([ChatMessage("system", system)], affinity="p1")
    messages = build_messages(system, [], "Hello.", 6)
    for _ in balanced.stream(messages, GenOptions(max_tokens=4, temperature=0.0), threading.Event(), affinity="p1"):
        pass
    timings = balanced.last_timings
    assert timings is not None
    assert timings["cache_n"] > 100 and timings["prompt_n"] < 30, f"the persona was evaluated again: {timings}"


def _spin(stop: MpEvent) -> None:
    while not stop.is_set():
        pass


_OPEN_AND_CLOSE = """
from npc_engine.pipeline.llm_llamacpp import LlamaCppChat
for _ in range(8):
    LlamaCppChat("fast", n_ctx=2048, n_parallel=4).close()
print("closed 8 times")
"""


def test_a_server_closed_right_after_it_opened_does_not_hang() -> None:
    """xllamacpp's server, destroyed before its loop thread has started, waits for that thread
    forever. An engine that opens and closes at once on a busy machine (a test, a bad config
    found after load) hung CI this way; the first token run at load makes sure the loop is up.
    Two spinning processes keep both cores busy (without the fix this hung within 5 rounds).
    The rounds run in a child process, killed at its timeout: a hang fails this test and the
    stuck thread dies with the child instead of holding the test run."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    spinners = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(2)]
    for p in spinners:
        p.start()
    try:
        done = subprocess.run([sys.executable, "-c", _OPEN_AND_CLOSE], cwd=REPO, capture_output=True,
                              text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("opening and closing the llama.cpp server 8 times hung")
    finally:
        stop.set()
        for p in spinners:
            p.join(timeout=10)
    assert done.returncode == 0 and "closed 8 times" in done.stdout, done.stderr[-2000:]
