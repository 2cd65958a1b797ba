"""Player voice in: push-to-talk from the microphone, or a WAV file fed at real-time pace.

The engine wants PCM16 mono 16 kHz in ~20 ms frames. ``sounddevice`` needs the PortAudio
library (Debian ``libportaudio2``); without it, or without an input device (a server, a
CI machine), :func:`probe_microphone` says why in one sentence and the game falls back to
typed lines or ``--say file.wav``.
"""

from __future__ import annotations

import logging
import queue
import wave
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

IN_RATE = 16_000
FRAME_SAMPLES = 320  # 20 ms at 16 kHz
FRAME_BYTES = FRAME_SAMPLES * 2


class MicUnavailable(RuntimeError):
    pass


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError:  # the module imports, then fails to find libportaudio
        raise MicUnavailable("no microphone: the PortAudio library is missing (install libportaudio2); type with T") from None
    except ImportError:
        raise MicUnavailable("no microphone: the sounddevice package is not installed; type with T") from None
    return sounddevice


def probe_microphone() -> str | None:
    """None if a microphone can be opened, else a sentence saying why not."""
    try:
        sd = _sounddevice()
        devices = sd.query_devices()
        if not any(d.get("max_input_channels", 0) > 0 for d in devices):
            return "no microphone found; type your lines with T (or start with --say file.wav)"
        sd.check_input_settings(samplerate=IN_RATE, channels=1, dtype="int16")
    except MicUnavailable as exc:
        return str(exc)
    except Exception as exc:  # PortAudioError and friends
        return f"the microphone cannot be opened ({exc}); type your lines with T"
    return None


class Microphone:
    """Push-to-talk capture: ``start()`` on key down, ``frames()`` every game frame, ``stop()`` on release."""

    def __init__(self) -> None:
        self._frames: queue.Queue[bytes] = queue.Queue()
        self._stream: Any = None
        self._rest = b""

    def start(self) -> None:
        sd = _sounddevice()

        def callback(indata: Any, _frames: int, _time: Any, status: Any) -> None:
            if status:
                log.debug("mic: %s", status)
            self._frames.put(bytes(indata))

        try:
            self._stream = sd.RawInputStream(
                samplerate=IN_RATE, channels=1, dtype="int16", blocksize=FRAME_SAMPLES, callback=callback
            )
            self._stream.start()
        except Exception as exc:
            self._stream = None
            raise MicUnavailable(f"the microphone cannot be opened ({exc}); type your lines with T") from None

    def frames(self) -> list[bytes]:
        """Whole 20 ms frames captured since the last call."""
        data = self._rest
        while True:
            try:
                data += self._frames.get_nowait()
            except queue.Empty:
                break
        n = len(data) // FRAME_BYTES * FRAME_BYTES
        self._rest = data[n:]
        return [data[i : i + FRAME_BYTES] for i in range(0, n, FRAME_BYTES)]

    def stop(self) -> list[bytes]:
        """Close the stream; returns the last frames (a short tail is padded to a frame)."""
        if self._stream is not None:
            try:
                self._stream.stop()
                self._stream.close()
            finally:
                self._stream = None
        out = self.frames()
        if self._rest:
            out.append(self._rest.ljust(FRAME_BYTES, b"\0"))
            self._rest = b""
        return out

    @property
    def active(self) -> bool:
        return self._stream is not None


def load_wav_16k(path: str | Path) -> bytes:
    """A WAV file as PCM16 mono 16 kHz (mixed down and resampled if it is not)."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except FileNotFoundError:
        raise ValueError(f"no WAV file at {path}") from None
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path} is not a PCM WAV file ({exc})") from None
    x: npt.NDArray[np.floating[Any]]
    if width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32)
    elif width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128) * 256
    elif width == 4:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 65536
    else:
        raise ValueError(f"{path}: {8 * width}-bit WAV is not supported; use 16-bit PCM")
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    if rate != IN_RATE and len(x):
        n = round(len(x) * IN_RATE / rate)
        x = np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x)
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


def frames_of(pcm: bytes) -> list[bytes]:
    """Split PCM16 into 20 ms frames (the last one padded with silence)."""
    out = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
    if out and len(out[-1]) < FRAME_BYTES:
        out[-1] = out[-1].ljust(FRAME_BYTES, b"\0")
    return out
