"""Tenant API keys at rest: AES-256-GCM under a keyring of secret keys with ids (pure).

No I/O: the randomness for nonces is passed in (``os.urandom`` at the edges).

A secret key is given as text (``AIRGAP_PROXY_SECRET_KEY``) in one of three forms:

1. ``base64:<44 characters>``: exactly 32 random bytes, base64-encoded
   (``openssl rand -base64 32``, prefixed with ``base64:``).
2. ``hex:<64 hex digits>``: exactly 32 bytes in hex.
3. Anything else of at least 16 characters: a random secret string, stretched
   to 32 bytes with HKDF-SHA256. HKDF is not a password hash: use a long
   random value, not a word.

Each key has an id: the first 16 hex digits of a SHA-256 over the key bytes
(one way; it reveals nothing usable). Every sealed value records the id of
the key that sealed it, so old keys keep decrypting after a rotation while new
writes use the current key. The associated data binds a ciphertext to its
tenant and its provider's base URL: a ciphertext copied to another tenant's
row (or another URL) fails to decrypt instead of leaking the key elsewhere.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
MIN_PASSPHRASE_CHARS = 16
MAX_KEY_TEXT_CHARS = 4096
_HKDF_SALT = b"airgap-proxy/secret-key/v1"
_HKDF_INFO = b"tenant api keys"
_KEY_ID_LABEL = b"airgap-proxy key id\x00"
_AAD_LABEL = b"airgap-proxy/tenant-api-key/v1"
KEY_FORMAT_HELP = (
    f"expected at least {MIN_PASSPHRASE_CHARS} characters of random text, "
    "base64:<32 bytes in base64> or hex:<64 hex digits>"
)


class KeyFormatError(ValueError):
    """The text is not a usable secret key. The message never contains the key."""


class SealError(Exception):
    """A sealed value cannot be opened. The message is safe to show."""


@dataclass(frozen=True, slots=True)
class SecretKey:
    """32 key bytes and their public id."""

    key_id: str
    material: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Sealed:
    """An encrypted value: the id of the key, the nonce and the ciphertext (with tag)."""

    key_id: str
    nonce: bytes
    ciphertext: bytes = field(repr=False)


def key_id_of(material: bytes) -> str:
    return hashlib.sha256(_KEY_ID_LABEL + material).hexdigest()[:16]


def parse_secret_key(text: str) -> SecretKey:
    """Parse one secret key in any of the documented forms."""
    text = text.strip()
    if len(text) > MAX_KEY_TEXT_CHARS:
        raise KeyFormatError(f"secret key is longer than {MAX_KEY_TEXT_CHARS} characters")
    if text.startswith("base64:"):
        try:
            material = base64.b64decode(text[len("base64:") :], validate=True)
        except (binascii.Error, ValueError):
            raise KeyFormatError("secret key after 'base64:' is not valid base64") from None
    elif text.startswith("hex:"):
        try:
            material = bytes.fromhex(text[len("hex:") :])
        except ValueError:
            raise KeyFormatError("secret key after 'hex:' is not valid hex") from None
    else:
        if len(text) < MIN_PASSPHRASE_CHARS:
            raise KeyFormatError(f"secret key is too short ({KEY_FORMAT_HELP})")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=_HKDF_SALT, info=_HKDF_INFO)
        material = hkdf.derive(text.encode("utf-8"))
    if len(material) != KEY_BYTES:
        raise KeyFormatError(f"secret key must be exactly {KEY_BYTES} bytes, got {len(material)}")
    return SecretKey(key_id_of(material), material)


def associated_data(tenant: str, base_url: str) -> bytes:
    """What a sealed key is bound to: its tenant and its provider's URL."""
    return b"\x00".join((_AAD_LABEL, tenant.encode("utf-8"), base_url.encode("utf-8")))


RandomBytes = Callable[[int], bytes]


def _no_randomness(size: int) -> bytes:
    raise SealError("this keyring cannot seal: it was built without a source of randomness")


@dataclass(frozen=True, slots=True)
class Keyring:
    """The current key (new writes) and previous keys (decryption only).

    ``random_bytes`` (``os.urandom`` at the edges) makes the nonces; the module
    itself stays free of I/O.
    """

    current: SecretKey | None = None
    previous: tuple[SecretKey, ...] = ()
    random_bytes: RandomBytes = field(default=_no_randomness, repr=False, compare=False)

    @classmethod
    def from_texts(cls, current: str | None, previous: tuple[str, ...], random_bytes: RandomBytes) -> Keyring:
        parsed = parse_secret_key(current) if current else None
        olds: list[SecretKey] = []
        for text in previous:
            key = parse_secret_key(text)
            if (parsed is None or key.key_id != parsed.key_id) and key not in olds:
                olds.append(key)
        return cls(parsed, tuple(olds), random_bytes)

    @property
    def can_seal(self) -> bool:
        return self.current is not None

    def key_ids(self) -> tuple[str, ...]:
        return tuple(k.key_id for k in ((self.current,) if self.current else ()) + self.previous)

    def _key(self, key_id: str) -> SecretKey | None:
        if self.current is not None and self.current.key_id == key_id:
            return self.current
        return next((k for k in self.previous if k.key_id == key_id), None)

    def seal(self, plaintext: str, aad: bytes) -> Sealed:
        """Encrypt with the current key and a fresh random nonce."""
        if self.current is None:
            raise SealError("no secret key is configured (AIRGAP_PROXY_SECRET_KEY)")
        nonce = self.random_bytes(NONCE_BYTES)
        if len(nonce) != NONCE_BYTES:
            raise SealError("the source of randomness returned a short nonce")
        ciphertext = AESGCM(self.current.material).encrypt(nonce, plaintext.encode("utf-8"), aad)
        return Sealed(self.current.key_id, nonce, ciphertext)

    def open(self, sealed: Sealed, aad: bytes) -> str:
        """Decrypt with whichever configured key has the recorded id."""
        key = self._key(sealed.key_id)
        if key is None:
            raise SealError(
                f"the key was sealed with secret key id {sealed.key_id}, which is not configured "
                "(add it to the previous secret keys)"
            )
        try:
            return AESGCM(key.material).decrypt(sealed.nonce, sealed.ciphertext, aad).decode("utf-8")
        except (InvalidTag, UnicodeDecodeError, ValueError):
            raise SealError(
                f"the sealed key does not decrypt with secret key id {sealed.key_id} "
                "(tampered with, or moved from another tenant)"
            ) from None

    def reseal(self, sealed: Sealed, aad: bytes) -> Sealed | None:
        """``sealed`` under the current key, or None when it already is."""
        if self.current is not None and sealed.key_id == self.current.key_id:
            return None
        return self.seal(self.open(sealed, aad), aad)
