"""sd_notify(3) without libsystemd: one datagram of ``KEY=value`` lines to the socket
named by ``$NOTIFY_SOCKET`` (an abstract socket if it starts with ``@``).

The service manager's variables are taken out of qsup's environment when read, as
``sd_notify(unset_environment=1)`` does: the workers qsup starts inherit its
environment, and must not speak for it (nor think a watchdog is theirs).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping

log = logging.getLogger("qsup")


class SdNotifier:
    """Sends state lines to the service manager; does nothing without one."""

    def __init__(self, address: str | None, watchdog_usec: int = 0):
        self.address = address or None
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] = os.environ) -> SdNotifier:
        address = environ.pop("NOTIFY_SOCKET", None)
        usec, pid = environ.pop("WATCHDOG_USEC", ""), environ.pop("WATCHDOG_PID", "")
        watchdog = int(usec) if usec.isdigit() else 0
        if pid and pid != str(os.getpid()):
            watchdog = 0  # the watchdog is another process's
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half the service manager's timeout."""
        return self.watchdog_usec / 2e6 if self.enabled and self.watchdog_usec else None

    def send(self, *lines: str) -> bool:
        """One notification (several lines make one datagram); True if sent. Never
        blocks: a service manager that does not read is not a reason to stall."""
        if not self.enabled:
            return False
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode("utf-8", "replace"), socket.MSG_DONTWAIT, address)
        except OSError as exc:
            if not self._failed:  # said once; every later failure is silent
                self._failed = True
                log.warning("cannot notify the service manager at %s: %s", self.address,
                            exc.strerror or exc)
            return False
        return True

    def reloading(self) -> bool:
        """RELOADING=1 with the time it began, as Type=notify-reload wants it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
