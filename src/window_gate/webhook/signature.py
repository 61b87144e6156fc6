"""Meta's X-Hub-Signature-256: HMAC-SHA256 of the raw body bytes with the app secret."""

import hmac
from collections.abc import Sequence


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.digest(secret, body, "sha256").hex()  # OpenSSL's one-shot: no HMAC object


def verify(header: str | None, body: bytes, secrets: Sequence[bytes]) -> bool:
    """True when any configured app secret produced the header; constant-time comparison."""
    if not header or not header.startswith("sha256="):
        return False
    given = header.encode()
    ok = False
    for secret in secrets:  # no early exit: the time taken does not say which secret matched
        ok |= hmac.compare_digest(sign(secret, body).encode(), given)
    return ok
