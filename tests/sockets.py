"""A Unix datagram socket a test binds, standing in for /dev/log, the journal's
socket or systemd's NOTIFY_SOCKET: a thread reads every datagram as it comes, with
the time it came (a sender must never block on a full queue of ten)."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
import time


class DatagramSink:
    def __init__(self, name: str = "sock", abstract: bool = False):
        self.dir = tempfile.mkdtemp(prefix="qsup-sock-", dir="/tmp")  # sun_path is 108 bytes
        self.path = os.path.join(self.dir, name)
        self.address = f"@qsup-test-{os.getpid()}-{id(self):x}" if abstract else self.path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:] if abstract else self.path)
        self.sock.settimeout(0.1)
        self.received: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((time.monotonic(), data))

    def messages(self) -> list[bytes]:
        return [data for _, data in list(self.received)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)
        os.rmdir(self.dir)

    def __enter__(self) -> DatagramSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def journal_entry(data: bytes) -> dict[str, str]:
    """One datagram of the journal's native protocol, as a dict of its fields."""
    fields, i = {}, 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            i = end + 1
        else:  # binary form: NAME \n little-endian u64 length, value, \n
            name = line
            (size,) = struct.unpack("<Q", data[end + 1:end + 9])
            value = data[end + 9:end + 9 + size]
            assert data[end + 9 + size:end + 10 + size] == b"\n"
            i = end + 10 + size
        fields[name.decode()] = value.decode()
    return fields
