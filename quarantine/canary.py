"""The canary: a known-good message run alone under the same limits before anything
is quarantined. If it dies too, the environment is at fault, not the message."""

from __future__ import annotations

import os
import shutil

from quarantine import store
from quarantine.errors import ConfigError

CANARY_ID = "qsup-canary"

BUILTIN = (
    b"From: qsup canary <canary@localhost>\r\n"
    b"To: postmaster@localhost\r\n"
    b"Subject: qsup canary\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
    b"Message-ID: <canary@qsup.invalid>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"This is a known-good message. qsup scans it to tell a broken scanner\r\n"
    b"environment from a poison message.\r\n"
)


def prepare(state_dir: str, source: str | None) -> str:
    """Place the canary in a private directory of the state dir; return its path.
    The file is named like a queue ID so workers treat it like any message. A
    canary file that cannot be read is a ConfigError; a state directory that cannot
    be written (a full disk) a StateError."""
    try:
        src = open(source, "rb") if source else None
    except OSError as exc:
        raise ConfigError(f"canary: cannot read {source}: {exc.strerror or exc}") from None
    folder = os.path.join(state_dir, "canary")
    path = os.path.join(folder, CANARY_ID)
    tmp = path + ".tmp"
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        with open(tmp, "wb") as fh:
            if src is None:
                fh.write(BUILTIN)
            else:
                shutil.copyfileobj(src, fh)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        raise store.failure(state_dir, exc) from None
    finally:
        if src is not None:
            src.close()
    return path
