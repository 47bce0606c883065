"""Queue IDs: what counts as one, and how a message is told apart from an older one
that had the same ID (MTAs reuse IDs)."""

import hashlib
import re

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# How much of a message its fingerprint covers. Enough to tell two messages apart
# (headers carry Message-ID and Received dates), small enough never to read bodies.
FINGERPRINT_BYTES = 4096


def is_queue_id(name: str) -> bool:
    return ID_RE.fullmatch(name) is not None


def fingerprint(size: int, head: bytes) -> str:
    """Size plus a hash of the first bytes: a reused queue ID with new content gets
    a new fingerprint, so it inherits neither strikes nor quarantine status."""
    digest = hashlib.blake2b(head[:FINGERPRINT_BYTES], digest_size=8)
    digest.update(size.to_bytes(8, "little"))
    return digest.hexdigest()


def message_key(qid: str, fp: str) -> str:
    return f"{qid}:{fp}"
