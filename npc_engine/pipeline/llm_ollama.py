"""LLM through the user's Ollama install, with the official ``ollama`` client.

Ollama keeps the model loaded for ``keep_alive`` and reuses the prompt prefix of the
previous request itself, so the persona prompt stays warm as long as the same model
serves the same character. Cold loads take 30-100 s in users' reports: the engine sends
a warm-up request when a session opens.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx

from npc_engine.pipeline.base import ChatMessage, GenOptions, ModelError, PromptUsage

log = logging.getLogger(__name__)


class OllamaChat:
    """``ChatModel`` backed by an Ollama server (``/api/chat`` with ``stream=True``)."""

    def __init__(
        self,
        model: str,
        *,
        host: str | None = None,
        keep_alive: str | float = "30m",
        options: Mapping[str, Any] | None = None,
        timeout: float | None = 120.0,
    ) -> None:
        import ollama

        self._ollama = ollama
        self.model = model
        self.host = host  # None: the client reads $OLLAMA_HOST, else localhost:11434
        self.name = f"ollama:{model}"
        self.keep_alive = keep_alive
        self.extra_options = dict(options or {})
        self._client: ollama.Client | None = ollama.Client(host=host, timeout=timeout)

    def _options(self, options: GenOptions) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "num_predict": options.max_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
            **self.extra_options,
        }
        if options.stop:
            opts["stop"] = list(options.stop)
        if options.seed is not None:
            opts["seed"] = options.seed
        if options.repeat_penalty != 1.0:  # options given to the backend (extra_options) win
            opts.setdefault("repeat_penalty", options.repeat_penalty)
            opts.setdefault("repeat_last_n", options.repeat_last_n)
        return opts

    def _where(self) -> str:
        return self.host or "$OLLAMA_HOST or http://127.0.0.1:11434"

    def stream(
        self,
        messages: Sequence[ChatMessage],
        options: GenOptions,
        cancel: threading.Event,
        affinity: str | None = None,
        usage: PromptUsage | None = None,  # left at zero: Ollama does not say what came from its cache
    ) -> Iterator[str]:
        if self._client is None:
            raise ModelError(f"the Ollama client for {self.model!r} is closed")
        try:
            chunks = self._client.chat(
                model=self.model,
                messages=[{"role": m.role, "content": m.content} for m in messages],
                stream=True,
                options=self._options(options),
                keep_alive=self.keep_alive,
            )
            for chunk in chunks:
                text = chunk.message.content if chunk.message else None
                if text:
                    yield text
                if cancel.is_set():
                    break
        except (ConnectionError, httpx.ConnectError) as exc:  # stream=True surfaces httpx's own error
            raise ModelError(
                f"no Ollama server answered at {self._where()}: start one with `ollama serve`, "
                "or pass --ollama-host",
                code="model_unavailable",
            ) from exc
        except self._ollama.ResponseError as exc:
            if exc.status_code == 404:
                raise ModelError(
                    f"Ollama at {self._where()} has no model {self.model!r}: run `ollama pull {self.model}`",
                    code="model_unavailable",
                ) from exc
            raise ModelError(f"Ollama failed ({exc.status_code}): {exc.error}") from exc
        except Exception as exc:  # a dropped stream surfaces as an httpx error
            raise ModelError(f"the Ollama stream broke off: {exc}") from exc

    def warm_up(
        self, messages: Sequence[ChatMessage], affinity: str | None = None, usage: PromptUsage | None = None
    ) -> None:
        for _ in self.stream(messages, GenOptions(max_tokens=1, temperature=0.0), threading.Event(), usage=usage):
            pass

    def release(self, affinity: str) -> None:
        pass  # Ollama keeps one cache per loaded model, not one per conversation

    def prime(self, messages: Sequence[ChatMessage]) -> bool:
        return False  # nothing to gain: the first conversation's warm-up loads the same cache

    def close(self) -> None:
        self._client = None
