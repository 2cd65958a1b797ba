"""The Ollama backend, end to end against an Ollama-protocol test double (tests/ollama_double.py).

The double's words come from the real embedded model; only the mid-stream crash is injected.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from npc_engine.client import EngineClient
from npc_engine.pipeline.base import ChatMessage, GenOptions, ModelError
from npc_engine.pipeline.llm_llamacpp import LlamaCppChat
from npc_engine.pipeline.llm_ollama import OllamaChat
from tests.harness import engine_config, running_engine
from tests.ollama_double import OllamaDouble

MSGS = [ChatMessage("system", "You are a friendly innkeeper."), ChatMessage("user", "Hello!")]


@pytest.fixture(scope="module")
def ollama() -> Iterator[OllamaDouble]:
    model = LlamaCppChat(n_parallel=1, n_ctx=2048)
    double = OllamaDouble(model).start()
    yield double
    double.stop()
    model.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_streams_deltas_with_keep_alive_and_options(ollama: OllamaDouble) -> None:
    chat = OllamaChat(ollama.model_name, host=ollama.host, keep_alive="10m")
    deltas = list(chat.stream(MSGS, GenOptions(max_tokens=24, temperature=0.2), threading.Event()))
    assert len(deltas) >= 2 and "".join(deltas).strip()
    req = ollama.requests[-1]
    assert req["stream"] is True and req["keep_alive"] == "10m"
    assert req["options"]["num_predict"] == 24 and req["options"]["temperature"] == 0.2


def test_cancel_stops_the_stream(ollama: OllamaDouble) -> None:
    chat = OllamaChat(ollama.model_name, host=ollama.host)
    cancel = threading.Event()
    got = []
    for delta in chat.stream(MSGS, GenOptions(max_tokens=60), cancel):
        got.append(delta)
        cancel.set()
    assert len(got) == 1


def test_no_server_is_a_clear_error() -> None:
    chat = OllamaChat("llama3.2", host=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ModelError) as info:
        list(chat.stream(MSGS, GenOptions(), threading.Event()))
    assert info.value.code == "model_unavailable"
    assert "ollama serve" in str(info.value)


def test_unknown_model_says_how_to_pull_it(ollama: OllamaDouble) -> None:
    chat = OllamaChat("no-such-model", host=ollama.host)
    with pytest.raises(ModelError) as info:
        list(chat.stream(MSGS, GenOptions(), threading.Event()))
    assert info.value.code == "model_unavailable" and "ollama pull no-such-model" in str(info.value)


async def test_engine_on_ollama_serves_turns_and_survives_a_crash(ollama: OllamaDouble, tmp_path: Path) -> None:
    # The double serves one request at a time, so the session warm-up delays the first turn.
    cfg = engine_config(
        tmp_path, llm="ollama", ollama_model=ollama.model_name, ollama_host=ollama.host, budget_llm_first_token_ms=30000
    )
    async with running_engine(cfg) as running:
        c = await EngineClient.connect(running.endpoint)
        s = await c.open_session("marta", "p-ollama", greet=False, audio=False)
        msgs = await (await s.say("Hello, what is on the menu?")).collect()
        assert msgs[-1]["status"] == "ok"
        # Streamed token by token from the Ollama API (how many clauses the model chose to say
        # is its own affair: one on some CPUs), and the pieces sent make up the reply.
        assert msgs[-1]["tokens"] >= 2
        assert "".join(m["delta"] for m in msgs if m["type"] == "reply.text").strip() == msgs[-1]["text"]
        # The model server dies mid-reply: the turn degrades to a fallback line, the session lives on.
        ollama.die_after_chunks = 2
        try:
            crashed = await (await s.say("And what about the rooms?")).collect()
        finally:
            ollama.die_after_chunks = None
        errors = [m for m in crashed if m["type"] == "error"]
        assert errors and errors[0]["code"] == "model_error"
        end = crashed[-1]
        assert end["status"] == "degraded" and end["degraded"][0]["stage"] == "llm"
        fallbacks = {running.engine.story.fill(f.text, running.engine.story_states["p-ollama"]) for f in running.engine.characters["marta"].fallbacks}
        assert any(f in end["text"] for f in fallbacks)
        after = await (await s.say("Thanks anyway.")).collect()
        assert after[-1]["status"] == "ok"
        await c.close()
