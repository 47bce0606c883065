"""The canary: a known-good message run alone under the same limits before anything
is quarantined. If it dies too, the environment is at fault, not the message."""

from __future__ import annotations

import os
import shutil

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
    The file is named like a queue ID so workers treat it like any message."""
    folder = os.path.join(state_dir, "canary")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, CANARY_ID)
    tmp = path + ".tmp"
    if source:
        shutil.copyfile(source, tmp)
    else:
        with open(tmp, "wb") as fh:
            fh.write(BUILTIN)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path
