"""TEST DOUBLE: a minimal Ollama-protocol HTTP server for the test suite.

The real Ollama server cannot be installed on our machines (design notes, section 4), so
the Ollama backend is tested against this stand-in. It speaks the parts of Ollama's API
that the official ``ollama`` Python client uses for chat: ``POST /api/chat`` streaming
NDJSON (one JSON object per line, ``done: true`` last), ``404 {"error": ...}`` for an
unknown model, ``GET /api/tags`` and ``GET /``. The words come from the real embedded
model (SmolLM2 on llama.cpp), so streaming behaviour is genuine.

Fault injection (the one thing a real server can't be made to do on demand): with
``die_after_chunks=N`` it drops the connection mid-stream after N chunks, the way a
crashing model server does.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from npc_engine.pipeline.base import ChatMessage, ChatModel, GenOptions


class OllamaDouble:
    def __init__(self, model: ChatModel, model_name: str = "smollm2:135m") -> None:
        self.model = model
        self.model_name = model_name
        self.die_after_chunks: int | None = None
        self.requests: list[dict[str, Any]] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            # Chunked HTTP/1.1 like the real server, so a connection dropped mid-stream is an
            # incomplete body (an error to the client), not a normal end.
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/api/tags":
                    self._json(200, {"models": [{"name": double.model_name, "model": double.model_name}]})
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", "17")
                    self.end_headers()
                    self.wfile.write(b"Ollama is running")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                req = json.loads(self.rfile.read(length) or b"{}")
                double.requests.append(req)
                if self.path != "/api/chat":
                    self._json(404, {"error": f"unknown endpoint {self.path}"})
                    return
                if req.get("model") != double.model_name:
                    self._json(404, {"error": f"model '{req.get('model')}' not found, try pulling it first"})
                    return
                double._chat(self, req)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.host = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _chat(self, h: BaseHTTPRequestHandler, req: dict[str, Any]) -> None:
        opts = req.get("options") or {}
        messages = [ChatMessage(m["role"], m["content"]) for m in req.get("messages", [])]
        gen = GenOptions(max_tokens=int(opts.get("num_predict", 64)), temperature=float(opts.get("temperature", 0.7)))
        stream = req.get("stream", True)
        h.send_response(200)
        h.send_header("Content-Type", "application/x-ndjson" if stream else "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Connection", "close")
        h.end_headers()

        def write(data: bytes) -> None:
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        t0 = time.perf_counter()
        count = 0
        text = []
        for delta in self.model.stream(messages, gen, threading.Event()):
            if self.die_after_chunks is not None and count >= self.die_after_chunks:
                h.connection.shutdown(2)  # the "model server crashed" fault: no final chunk
                h.close_connection = True
                return
            count += 1
            text.append(delta)
            if stream:
                write(self._line({"message": {"role": "assistant", "content": delta}, "done": False}))
        final = {
            "message": {"role": "assistant", "content": "" if stream else "".join(text)},
            "done": True,
            "done_reason": "stop",
            "total_duration": int((time.perf_counter() - t0) * 1e9),
            "eval_count": count,
        }
        write(self._line(final))
        h.wfile.write(b"0\r\n\r\n")
        h.close_connection = True

    def _line(self, obj: dict[str, Any]) -> bytes:
        obj = {"model": self.model_name, "created_at": datetime.now(timezone.utc).isoformat(), **obj}
        return (json.dumps(obj) + "\n").encode()

    def start(self) -> OllamaDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
