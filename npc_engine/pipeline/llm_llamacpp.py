"""Embedded LLM: llama.cpp through xllamacpp, on a profile's GGUF (``llm_profiles``) or any GGUF.

Why xllamacpp rather than llama-cpp-python: it ships prebuilt CPU wheels (llama-cpp-python
is an sdist that takes ~4 minutes to compile on two cores, in every CI run), and it wraps
llama.cpp's *server* core, whose slots each keep their own KV cache and reuse the longest
matching prompt prefix (``cache_prompt``). A character's persona prompt therefore stays
evaluated between turns, and several sessions can decode at once in one batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from npc_engine.pipeline.base import ChatMessage, GenOptions, ModelError, PromptUsage
from npc_engine.pipeline.llm_profiles import resolve_model
from npc_engine.pipeline.scheduling import lower_priority, native_threads

log = logging.getLogger(__name__)


def _fill_usage(usage: PromptUsage, timings: dict[str, Any]) -> None:
    """llama.cpp's ``prompt_n`` is the prompt tokens this request evaluated, ``cache_n`` those
    reused from the slot's KV cache (the longest prefix shared with its previous request)."""
    evaluated = int(timings.get("prompt_n") or 0)
    usage.evaluated = evaluated
    usage.tokens = evaluated + int(timings.get("cache_n") or 0)


def shared_chars(a: Sequence[ChatMessage], b: Sequence[ChatMessage]) -> int:
    """How many characters of their text two prompts share from the start (roles included)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x.role != y.role:
            break
        if x.content != y.content:
            same = next((i for i, (c, d) in enumerate(zip(x.content, y.content, strict=False)) if c != d), None)
            return n + (min(len(x.content), len(y.content)) if same is None else same)
        n += len(x.content)
    return n


def embedded_model_path() -> Path:
    """The default profile's verified GGUF (``llm_profiles.DEFAULT_PROFILE``)."""
    return resolve_model(None)


# A cache that shares less than this with a new prompt (~30 tokens) is worth nothing to it.
MIN_SHARED_CHARS = 120


class SlotTable:
    """Which llama.cpp slot (KV cache) each conversation uses, and what each slot holds.

    A conversation keeps its slot while it stays among the ``n`` most recent. A new one takes
    the free slot whose cache begins most like its prompt (a character's persona primed at
    start, or left by a conversation with that character that ended: ``release``), else the
    least recently used one's."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._lock = threading.Lock()
        self._by_affinity: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._held: list[list[ChatMessage]] = [[] for _ in range(n)]  # the latest prompt sent to each

    def slot_for(self, affinity: str, messages: Sequence[ChatMessage] = (), *, sending: bool = False) -> int:
        """``affinity``'s slot; ``sending``: ``messages`` go to it now (its cache will hold them)."""
        with self._lock:
            if affinity in self._by_affinity:
                self._by_affinity.move_to_end(affinity)
                slot = self._by_affinity[affinity]
            else:
                free = self._free()
                if free:
                    slot = max(free, key=lambda i: self._fit(i, messages))
                else:
                    slot = self._by_affinity.popitem(last=False)[1]
                self._by_affinity[affinity] = slot
            if sending:
                self._held[slot] = list(messages)
            return slot

    def release(self, affinity: str) -> None:
        with self._lock:
            self._by_affinity.pop(affinity, None)  # its cache stays, for a conversation that starts alike

    def claim_empty(self, messages: Sequence[ChatMessage]) -> int | None:
        """A free slot whose cache is empty, now holding ``messages``; None if there is none
        (a primed persona is never evicted for another)."""
        with self._lock:
            empty = [i for i in self._free() if not self._held[i]]
            if not empty:
                return None
            self._held[empty[0]] = list(messages)
            return empty[0]

    def _fit(self, slot: int, messages: Sequence[ChatMessage]) -> tuple[int, bool, int]:
        """How well ``slot`` suits a new conversation's ``messages``, the best highest: the
        most shared (a few words, "You are ", do not count), then an empty cache over someone
        else's (a primed persona stays for its character), then the lowest number."""
        shared = shared_chars(self._held[slot], messages)
        return (shared if shared >= MIN_SHARED_CHARS else 0, not self._held[slot], -slot)

    def _free(self) -> list[int]:
        used = set(self._by_affinity.values())
        return [i for i in range(self._n) if i not in used]


class LlamaCppChat:
    """``ChatModel`` on an in-process llama.cpp server."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = 4096,
        n_parallel: int = 4,
        threads: int = 1,
        nice: int = 0,
    ) -> None:
        import xllamacpp

        # A profile name (fast / balanced / quality), a GGUF path, or None: the default profile.
        path = resolve_model(model_path)
        if not path.is_file():
            raise ModelError(f"LLM model file not found: {path}", code="model_unavailable")
        self.name = f"llama.cpp:{path.stem}"
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        # Each slot gets n_ctx / n_parallel tokens of context.
        params.n_ctx = n_ctx
        params.n_parallel = n_parallel
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.cache_prompt = True
        params.verbosity = -1 if not log.isEnabledFor(logging.DEBUG) else 1
        t0 = time.perf_counter()
        before = native_threads()
        try:
            self._server = xllamacpp.Server(params)
        except Exception as exc:
            raise ModelError(f"llama.cpp could not load {path}: {exc}", code="model_unavailable") from exc
        if nice:  # the voice gets the core first when both want it (scheduling.py)
            lower_priority(native_threads() - before, nice)
        # One token through the server's loop before it is used or closed: a server destroyed
        # before its loop thread has started waits for that thread forever (its stop signal is
        # lost; seen under load when an engine opens and closes at once, tests/test_security).
        try:
            self._server.handle_completions({"prompt": "Hi", "max_tokens": 1, "stream": False})
        except Exception as exc:
            raise ModelError(f"llama.cpp could not run {path}: {exc}", code="model_unavailable") from exc
        log.info("LLM %s loaded in %.2f s (%d slots, %d thread(s))", path.name, time.perf_counter() - t0, n_parallel, threads)
        self._closed = False
        # llama.cpp's timings of the latest request (cache_n = prompt tokens reused from
        # the KV cache, prompt_n = tokens evaluated): shows the persona prefix stayed warm.
        self.last_timings: dict[str, Any] | None = None
        # Conversation -> llama.cpp slot. Without pinning, a request that follows a cut-short
        # reply finds that slot still winding down, lands on another slot and evaluates the
        # whole persona prompt again (seconds on a CPU).
        self._slots = SlotTable(n_parallel)

    def release(self, affinity: str) -> None:
        self._slots.release(affinity)

    def prime(self, messages: Sequence[ChatMessage]) -> bool:
        if self._closed:
            raise ModelError("the LLM has been shut down")
        slot = self._slots.claim_empty(messages)
        if slot is None:
            return False
        request = self._request(messages, GenOptions(max_tokens=1, temperature=0.0), True)
        request["id_slot"] = slot
        for _ in self._run(request, threading.Event(), None):
            pass
        return True

    def _request(self, messages: Sequence[ChatMessage], options: GenOptions, stream: bool) -> dict[str, Any]:
        req: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": stream,
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
            "cache_prompt": True,
            # Timings on every chunk, not only the last: a reply cut short (barge-in, the
            # sentence cap) still reports how much of its prompt came from the KV cache.
            "timings_per_token": True,
        }
        if options.stop:
            req["stop"] = list(options.stop)
        if options.seed is not None:
            req["seed"] = options.seed
        if options.repeat_penalty != 1.0:
            req["repeat_penalty"] = options.repeat_penalty
            req["repeat_last_n"] = options.repeat_last_n
        if options.dry_multiplier > 0:
            req["dry_multiplier"] = options.dry_multiplier
            req["dry_base"] = options.dry_base
            req["dry_allowed_length"] = options.dry_allowed_length
        if options.logit_bias:
            req["logit_bias"] = [[token, bias] for token, bias in options.logit_bias]
        return req

    def stream(
        self,
        messages: Sequence[ChatMessage],
        options: GenOptions,
        cancel: threading.Event,
        affinity: str | None = None,
        usage: PromptUsage | None = None,
    ) -> Iterator[str]:
        if self._closed:
            raise ModelError("the LLM has been shut down")
        request = self._request(messages, options, True)
        if affinity is not None:
            # A busy slot makes the request wait: ms.
            request["id_slot"] = self._slots.slot_for(affinity, messages, sending=True)
        yield from self._run(request, cancel, usage)

    def _run(self, request: dict[str, Any], cancel: threading.Event, usage: PromptUsage | None) -> Iterator[str]:
        """Stream one request's text deltas (the thread hand-off below)."""
        items: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()
        done = object()

        def on_chunk(chunk: Any) -> bool:
            # Returning True tells llama.cpp to cancel the task: that is how a barge-in
            # stops decoding within one token.
            if isinstance(chunk, dict):
                if "error" in chunk:
                    items.put(ModelError(f"llama.cpp: {chunk['error']}"))
                    return True
                # Timings before the text: the queue hand-off then publishes the usage to
                # the reader along with the first delta.
                if "timings" in chunk:
                    timings = chunk["timings"]
                    self.last_timings = timings
                    if usage is not None:
                        _fill_usage(usage, timings)
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        items.put(text)
            return cancel.is_set() or stop.is_set()

        def call() -> None:
            try:
                self._server.handle_chat_completions(request, on_chunk)
            except Exception as exc:
                items.put(ModelError(f"llama.cpp failed: {exc}"))
            finally:
                items.put(done)

        # handle_chat_completions blocks until the reply ends and calls back on its own
        # thread; a helper thread turns that push API into this pull iterator.
        caller = threading.Thread(target=call, name="npc-llm-call", daemon=True)
        caller.start()
        try:
            while True:
                item = items.get()
                if item is done:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()
            # llama.cpp stops at its next token; wait for that (ms), so the slot is free for
            # the next request and no thread is left inside llama.cpp when the process exits.
            caller.join(timeout=5.0)

    def warm_up(
        self, messages: Sequence[ChatMessage], affinity: str | None = None, usage: PromptUsage | None = None
    ) -> None:
        # One token is enough to evaluate (and so cache) the prompt prefix. The same slot as
        # the conversation's turns (``slot_for``), or the next turn would find a cold cache.
        opts = GenOptions(max_tokens=1, temperature=0.0)
        for _ in self.stream(messages, opts, threading.Event(), affinity, usage):
            pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            server, self._server = self._server, None
            del server

