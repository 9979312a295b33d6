"""Password hashes for HTTP Basic: only hashes are stored, never the password itself.

scrypt (memory-hard, in the standard library) is what ``python -m api.passwords``
writes; PBKDF2-SHA256 in Django's notation is accepted too, because that is what many
operators' tools already produce. Verification always runs the full KDF and compares
in constant time; :data:`DUMMY` lets the caller spend the same time on a user that does
not exist, so timing does not tell which user names are real.

Hash formats::

    scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>
    pbkdf2_sha256$<iterations>$<salt>$<hash, base64>
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import secrets
import sys

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MB and a few tens of ms per check
_DKLEN = 32


class PasswordHashError(ValueError):
    """A stored hash is not in a known format; the message shows the expected one."""


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)])


def check_hash(stored: str) -> None:
    """Raise :class:`PasswordHashError` unless ``stored`` is a hash this module can verify."""
    _parse(stored)


def verify_password(password: str, stored: str) -> bool:
    kind, params, salt, expected = _parse(stored)
    if kind == "scrypt":
        n, r, p = params
        actual = _scrypt(password, salt, n, r, p)
    else:
        actual = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, params[0], len(expected))
    return hmac.compare_digest(actual, expected)


def _parse(stored: str) -> tuple[str, tuple[int, ...], bytes, bytes]:
    parts = stored.split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = (int(x) for x in parts[1:4])
            return "scrypt", (n, r, p), _unb64(parts[4]), _unb64(parts[5])
        if parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            return "pbkdf2_sha256", (int(parts[1]),), parts[2].encode(), _unb64(parts[3])
    except ValueError:
        pass
    raise PasswordHashError("not a password hash Feedstore knows; expected scrypt$N$r$p$salt$hash "
                            "(make one with `python -m api.passwords`) or pbkdf2_sha256$iterations$salt$hash")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * n * r * p + 2**20,
                          dklen=_DKLEN)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


#: A valid hash of a random password: checked against when a user name is unknown.
DUMMY = hash_password(secrets.token_urlsafe(16))


def main() -> int:
    """Prompt for a password twice and print its hash for the credentials file."""
    first = getpass.getpass("password: ")
    if len(first) < 12:
        print("use at least 12 characters", file=sys.stderr)
        return 2
    if getpass.getpass("again: ") != first:
        print("the two entries differ", file=sys.stderr)
        return 2
    print(hash_password(first))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
