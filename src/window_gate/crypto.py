"""Secrets at rest — the phone numbers' access tokens, the subscriptions' secrets: Fernet (AES-128-CBC + HMAC-SHA256, authenticated, versioned),
through `cryptography`'s MultiFernet so that ENCRYPTION_KEY may list several keys: the first encrypts,
every one decrypts (rotation: put the new key first, `window-gate phone-numbers reencrypt`, drop the old).

Subscription secrets are sealed only when ENCRYPTION_KEY is set (a gate without one keeps them as shown,
`whsec_…`, which a Fernet token never starts with). Decrypted tokens are remembered per process for a minute, keyed by their ciphertext, so a send pays no
cryptography in the steady state; a token set anew is a new ciphertext, so it is never served stale."""

import time

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from window_gate.errors import EncryptionNotConfigured, UpstreamConfiguration

CACHE_SECONDS = 60.0
CACHE_MAX = 10_000


class Sealer:
    """Encrypts and decrypts access tokens with ENCRYPTION_KEY's keys (none: storing a token is refused)."""

    def __init__(self, keys: list[str]) -> None:
        self._fernet = MultiFernet([Fernet(k) for k in keys]) if keys else None
        self._opened: dict[str, tuple[float, str]] = {}

    @property
    def configured(self) -> bool:
        return self._fernet is not None

    def seal(self, token: str) -> str:
        if self._fernet is None:
            raise EncryptionNotConfigured(
                "set WINDOW_GATE_ENCRYPTION_KEY (Fernet.generate_key()) to store access tokens; "
                "they are never stored in plain text"
            )
        return self._fernet.encrypt(token.encode()).decode()

    def open(self, sealed: str | None) -> str | None:
        """The token in `sealed` (None: the number has none of its own)."""
        if sealed is None:
            return None
        now = time.monotonic()
        hit = self._opened.get(sealed)
        if hit is not None and hit[0] > now:
            return hit[1]
        token = self.decrypt(sealed)
        if len(self._opened) >= CACHE_MAX:
            self._opened.clear()
        self._opened[sealed] = (now + CACHE_SECONDS, token)
        return token

    def decrypt(self, sealed: str, what: str = "this number's access token") -> str:
        if self._fernet is None:
            raise UpstreamConfiguration(f"{what} is encrypted and WINDOW_GATE_ENCRYPTION_KEY is not set")
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise UpstreamConfiguration(
                f"{what} was encrypted with a key WINDOW_GATE_ENCRYPTION_KEY no longer lists: add that key "
                "back, or set it again"
            ) from None

    def rotate(self, sealed: str) -> str:
        """The same token, encrypted anew under the first key."""
        if self._fernet is None:
            raise EncryptionNotConfigured("set WINDOW_GATE_ENCRYPTION_KEY to re-encrypt access tokens")
        try:
            return self._fernet.rotate(sealed.encode()).decode()
        except InvalidToken:
            raise UpstreamConfiguration(
                "a token was encrypted with a key ENCRYPTION_KEY does not list"
            ) from None
