"""Who may talk to the engine, and for what: resume tokens, bind policy, CURVE keys.

* A session belongs to the connection that opened it. ``ResumeTokens`` hands each session an
  unguessable token in ``session.opened``; another connection (a game that reconnected) takes
  the session over only by presenting it in ``session.resume``.
* A plain (unencrypted, unauthenticated) socket is only bound where nobody else can reach it:
  loopback, ``ipc://`` or ``inproc://``. Anything else needs ZeroMQ CURVE keys
  (``npc-engine keys``), or an explicit ``--insecure``, which is logged as a warning.

``docs/protocol.md`` (Security) is the human-readable form of this module.
"""

from __future__ import annotations

import contextlib
import datetime
import hmac
import ipaddress
import logging
import os
import secrets
import stat
import weakref
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio
import zmq.auth
from zmq.utils import z85

from npc_engine.scene import Scene
from npc_engine.session import Session

log = logging.getLogger(__name__)

PUBLIC_KEY_FILE = "server.key"
SECRET_KEY_FILE = "server.key_secret"
# Transports that never leave the machine.
LOCAL_TRANSPORTS = ("ipc://", "inproc://")
TOKEN_BYTES = 24  # 192 bits: not guessable, not brute-forceable over a socket


# --------------------------------------------------------------------------- session ownership


class ResumeTokens:
    """One resume token per open session, for the connection that opened it.

    Held weakly by session, so a session that is closed and dropped (however it was closed:
    ``session.close``, expiry, shutdown) takes its token with it.
    """

    def __init__(self) -> None:
        self._tokens: weakref.WeakKeyDictionary[Session | Scene, str] = weakref.WeakKeyDictionary()

    def issue(self, session: Session | Scene) -> str:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._tokens[session] = token
        return token

    def token_of(self, session: Session | Scene) -> str | None:
        return self._tokens.get(session)

    def accepts(self, session: Session | Scene, token: str) -> bool:
        """Whether ``token`` is this session's; compared in constant time (no timing oracle)."""
        expected = self._tokens.get(session)
        return expected is not None and hmac.compare_digest(expected.encode(), token.encode())


# --------------------------------------------------------------------------- bind policy


def is_local(endpoint: str) -> bool:
    """Whether ``endpoint`` can only be reached from this machine.

    Loopback addresses (127.0.0.0/8, ::1, ``localhost``), ``ipc://`` and ``inproc://`` are
    local. Everything else is not: other addresses, ``*``, interface names (``eth0``), host
    names (they may resolve anywhere) and other transports.
    """
    if endpoint.startswith(LOCAL_TRANSPORTS):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def refusal(endpoint: str, curve_secret_key: Path | None, insecure: bool) -> str | None:
    """Why binding ``endpoint`` this way is refused, or ``None`` if it is allowed."""
    if curve_secret_key is not None or insecure or is_local(endpoint):
        return None
    return (
        f"refusing to listen on {endpoint} without encryption: anyone who can reach it could "
        "drive your NPCs and read every player's conversations. Make keys with `npc-engine keys` "
        "and start with --curve-secret-key FILE (games then connect with the public key it prints), "
        "or bind 127.0.0.1, or pass --insecure if this network is trusted"
    )


def bind_problem(endpoint: str, curve_secret_key: Path | None, insecure: bool) -> str | None:
    """What would stop ``server_keys`` (a refused endpoint, a bad key file), without logging."""
    if curve_secret_key is not None:
        try:
            CurveKeys.load(curve_secret_key)
        except KeyFileError as exc:
            return str(exc)
        return None
    return refusal(endpoint, curve_secret_key, insecure)


class BindRefused(OSError):
    """A non-local endpoint without CURVE keys and without ``insecure``."""


def server_keys(endpoint: str, curve_secret_key: Path | None, insecure: bool) -> CurveKeys | None:
    """The CURVE keys to bind ``endpoint`` with, or ``None`` for a plain socket.

    Raises ``BindRefused`` for a plain non-local bind unless ``insecure`` (then warns), and
    ``KeyFileError`` for a key file that cannot be used.
    """
    if curve_secret_key is not None:
        keys = CurveKeys.load(curve_secret_key)
        _warn_if_readable_by_others(curve_secret_key)
        return keys
    why = refusal(endpoint, curve_secret_key, insecure)
    if why is not None:
        raise BindRefused(why)
    if not is_local(endpoint):
        log.warning(
            "listening on %s WITHOUT encryption or authentication (--insecure): anyone who can reach "
            "this address can drive the NPCs and read players' conversations", endpoint,
        )
    return None


# --------------------------------------------------------------------------- CURVE keys


class KeyFileError(OSError):
    """A CURVE key file that is missing, unreadable or not a key."""


@dataclass(frozen=True)
class CurveKeys:
    """A CURVE key pair, both halves Z85-encoded (40 characters each)."""

    public: bytes
    secret: bytes

    @classmethod
    def generate(cls) -> CurveKeys:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    @classmethod
    def from_secret(cls, secret: bytes) -> CurveKeys:
        if len(secret) != 40:
            raise KeyFileError(f"a CURVE secret key is 40 Z85 characters, not {len(secret)}")
        try:
            z85.decode(secret)
            public = zmq.curve_public(secret)
        except (ValueError, KeyError, zmq.ZMQError) as exc:
            raise KeyFileError(f"not a Z85 CURVE secret key ({exc})") from None
        return cls(public, secret)

    @classmethod
    def load(cls, path: Path) -> CurveKeys:
        """The server key pair from a secret key file: ``npc-engine keys`` output (a ZeroMQ
        certificate), or a file holding just the 40-character Z85 secret key."""
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"cannot read the CURVE secret key {path}: {exc}") from None
        if "secret-key" in text or "public-key" in text:
            try:
                _public, secret = zmq.auth.load_certificate(path)
            except (OSError, ValueError) as exc:
                raise KeyFileError(f"{path} is not a ZeroMQ certificate: {exc}") from None
            if secret is None:
                raise KeyFileError(f"{path} holds no secret key (is it the public {PUBLIC_KEY_FILE}?)")
        else:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
            if len(lines) != 1:
                raise KeyFileError(f"{path} must hold one Z85 secret key (or be made by `npc-engine keys`)")
            secret = lines[0].encode("ascii")
        try:
            return cls.from_secret(secret)
        except KeyFileError as exc:
            raise KeyFileError(f"{path}: {exc}") from None

    def serve_on(self, sock: zmq.Socket[bytes] | zmq.asyncio.Socket) -> None:
        """Make ``sock`` a CURVE server: every connection is encrypted, and only clients that
        know this public key complete the handshake. Call before ``bind``."""
        sock.curve_server = True
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public


def write_keys(directory: Path, *, force: bool = False) -> tuple[CurveKeys, Path, Path]:
    """A fresh server key pair in ``directory``: ``server.key`` (public, to give to games) and
    ``server.key_secret`` (mode 0600, for ``serve --curve-secret-key``). Returns the keys and
    both paths; refuses to replace existing keys unless ``force``."""
    keys = CurveKeys.generate()
    public_path, secret_path = directory / PUBLIC_KEY_FILE, directory / SECRET_KEY_FILE
    existing = [p for p in (public_path, secret_path) if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists; pass --force to replace the keys (games need the new public key)")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    public = keys.public.decode("ascii")
    secret = keys.secret.decode("ascii")
    _write(public_path, _certificate(stamp, "Public", public, None), 0o644)
    # The secret file is created 0600 (never readable by others, not even for an instant).
    _write(secret_path, _certificate(stamp, "Secret", public, secret), 0o600)
    return keys, public_path, secret_path


def _certificate(stamp: str, kind: str, public: str, secret: str | None) -> str:
    """The ZeroMQ certificate format (ZPL), as pyzmq's and czmq's tools read it."""
    lines = [
        f"#   ****  Generated on {stamp} by npc-engine keys  ****",
        f"#   ZeroMQ CURVE **{kind}** Certificate",
    ]
    if secret is not None:
        lines.append("#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.")
    lines += ["", "metadata", "curve", f'    public-key = "{public}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret}"')
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, mode: int) -> None:
    with contextlib.suppress(FileNotFoundError):  # --force: replace, never write through an old file
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
    os.chmod(path, mode)  # the umask may have taken bits away from the public file


def _warn_if_readable_by_others(path: Path) -> None:
    if os.name != "posix":
        return  # mode bits mean little on Windows
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by other users (mode %o): chmod 600 it", path, stat.S_IMODE(mode))
