"""Legacy VMess, for users with ``alterId`` > 0, sans-IO: the MD5 user hash that starts such a
request, its AES-128-CFB header, and the CFB response header (V2Ray 4.34's
proxy/vmess/encoding and validator, common/protocol/id.go).

A legacy request is ``HMAC-MD5(id, BE u64 time) ‖ AES-128-CFB(cmdKey, MD5(time x 4), header)``
where ``id`` is one of the user's alter ids (V2Ray's clients pick one at random) and the header
is laid out as in AEAD requests. The user hash is the same for every request of one id in one
second, so it cannot be refused as a replay; a replay is recognised by its body key and IV.
Anyone who knows the id can tell such a server from others (the hash is probe-able), which is
why V2Ray moved to AEAD: revproxy accepts legacy requests only from users given alter ids.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import uuid
from collections import deque
from collections.abc import Iterable, Mapping

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # cryptography >= 43 keeps CFB among the "decrepit" modes; Debian bookworm has 38
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - depends on the installed version
    from cryptography.hazmat.primitives.ciphers.modes import CFB  # type: ignore[assignment,unused-ignore]

from .crypto import User
from .replay import MAX_TIME_SKEW

HASH_LEN = 16
# V2Ray's switch that makes its inbounds refuse legacy requests (later V2Ray releases read it;
# its platform flags are spelled both ways).
AEAD_FORCED_FLAGS = ("v2ray.vmess.aead.forced", "V2RAY_VMESS_AEAD_FORCED")
_ALTER_SALT = b"16167dc8-16b6-4e6d-b8bb-65dd68113a81"
_ALTER_RETRY_SALT = b"533eff8a-4113-4b10-b5ce-0f5d76b98cd2"
_TIME = struct.Struct(">Q")


def aead_forced(environ: Mapping[str, str]) -> bool:
    """Whether the environment forces AEAD (no legacy request accepted)."""
    for name in AEAD_FORCED_FLAGS:
        if name in environ:
            return environ[name] == "true"
    return False


def alter_ids(user_id: str, count: int) -> list[bytes]:
    """The ``count`` alter ids V2Ray derives from a user id: each the MD5 of the previous one and
    a fixed salt (salted again in the unlikely case it equals the previous one)."""
    previous = uuid.UUID(user_id).bytes
    ids = []
    for _ in range(count):
        digest = hashlib.md5(previous + _ALTER_SALT)
        new = digest.digest()
        while new == previous:
            digest.update(_ALTER_RETRY_SALT)
            new = digest.digest()
        ids.append(new)
        previous = new
    return ids


def user_hash(id_bytes: bytes, timestamp: int) -> bytes:
    """What a legacy request starts with: HMAC-MD5 keyed with the id, over the time."""
    return hmac.new(id_bytes, _TIME.pack(timestamp), hashlib.md5).digest()


def header_iv(timestamp: int) -> bytes:
    """The legacy header's CFB IV: MD5 of the time written four times."""
    return hashlib.md5(_TIME.pack(timestamp) * 4).digest()


def cfb(key: bytes, iv: bytes) -> Cipher[CFB]:
    """AES-128 in 128-bit CFB, as Go's cipher.NewCFB{En,De}crypter."""
    return Cipher(algorithms.AES(key), CFB(iv))


def response_key_iv(body_key: bytes, body_iv: bytes) -> tuple[bytes, bytes]:
    """A legacy request's response-direction body key and IV: MD5 of the request's."""
    return hashlib.md5(body_key).digest(), hashlib.md5(body_iv).digest()


def session_key(user: User, body_key: bytes, body_iv: bytes) -> bytes:
    """What identifies one legacy request for the replay filter (V2Ray's session history
    keys it on the user, body key and IV)."""
    return hashlib.md5(uuid.UUID(user.id).bytes + body_key + body_iv).digest()


class LegacyUsers:
    """The user hashes of every alter id of the users that have some, for the seconds within
    ``MAX_TIME_SKEW`` of now: generated as time moves on, forgotten once too old (V2Ray's
    TimedUserValidator, minus the primary id of users without alter ids)."""

    __slots__ = ("_ids", "_hashes", "_by_second", "_last")

    def __init__(self, users: Iterable[tuple[User, int]]) -> None:
        """``users``: each user with its alter id count; users with none are left out."""
        self._ids = [(user, alter_ids(user.id, count)) for user, count in users if count > 0]
        self._hashes: dict[bytes, tuple[User, int]] = {}
        self._by_second: deque[tuple[int, list[bytes]]] = deque()
        self._last: int | None = None  # the latest second whose hashes exist

    def __bool__(self) -> bool:
        return bool(self._ids)

    def match(self, head: bytes, now: float) -> tuple[User, int] | None:
        """The user and time a legacy request's first 16 bytes name, if any."""
        self._advance(int(now))
        return self._hashes.get(bytes(head))

    def _advance(self, now: int) -> None:
        oldest, newest = now - MAX_TIME_SKEW, now + MAX_TIME_SKEW
        by_second = self._by_second
        while by_second and by_second[0][0] < oldest:
            for old in by_second.popleft()[1]:
                self._hashes.pop(old, None)
        start = oldest if self._last is None else max(self._last + 1, oldest)
        for second in range(start, newest + 1):
            made = []
            for user, ids in self._ids:
                for id_bytes in ids:
                    digest = user_hash(id_bytes, second)
                    self._hashes[digest] = (user, second)
                    made.append(digest)
            by_second.append((second, made))
        if start <= newest:
            self._last = newest


def seal_request(user_id: str, id_bytes: bytes, timestamp: int, header_plain: bytes) -> bytes:
    """A legacy request as V2Ray's clients with alter ids write it (for tests and probes):
    the user hash, then the header (with its checksum) encrypted under the user's cmd key."""
    key = User(user_id).cmd_key
    encryptor = cfb(key, header_iv(timestamp)).encryptor()
    return user_hash(id_bytes, timestamp) + encryptor.update(header_plain)


def open_response(body_key: bytes, body_iv: bytes, data: bytes) -> bytes:
    """Decrypt a legacy response header (4 bytes: response auth, option, command, its
    length), for tests."""
    key, iv = response_key_iv(body_key, body_iv)
    return cfb(key, iv).decryptor().update(data)
