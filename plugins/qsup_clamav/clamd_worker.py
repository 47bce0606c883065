"""Persistent qsup worker: hands each message to clamd over its Unix socket.

    python -m qsup_clamav.clamd_worker --socket /run/clamav/clamd.ctl [--timeout S] [--stream]

A connection per message. By default the open file is passed (``zFILDES``, as
``clamdscan --fdpass`` does): nothing is copied, clamd reads it itself. ``--stream``
sends the bytes instead (``zINSTREAM``), for a clamd that refuses descriptors. clamd's
answer "OK" is ``clean``, "NAME FOUND" is ``infected NAME``. Everything else ends this worker, so qsup counts a crash
of the message being scanned — and its canary tells a dead clamd from a poison
message: clamd closing the connection before it answers (killed, or crashed on
this very message), an ``ERROR`` answer (a message clamd could not scan is never
passed as clean), no answer within the timeout.
"""

from __future__ import annotations

import argparse
import array
import errno
import os
import re
import socket
import stat
import struct
import time

from quarantine.worker import serve

_RETRY = (errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN)
_FD = re.compile(r"^fd\[\d+\]: ")


class Dropped(SystemExit):
    """clamd went away mid-message: the worker ends with this one line on stderr."""


def parse_reply(reply: bytes) -> str:
    text = reply.rstrip(b"\0").decode("utf-8", "replace").strip()
    body = _FD.sub("", text, count=1).removeprefix("stream: ")
    if body == "OK":
        return "clean"
    if body.endswith(" FOUND"):
        return "infected " + body[: -len(" FOUND")].strip().replace(" ", "_")
    raise SystemExit(f"clamd could not scan the message: {text[:300]!r}")


class Clamd:
    def __init__(self, path: str, timeout: float, connect_wait: float, chunk_size: int,
                 fdpass: bool = True):
        self.path, self.timeout, self.fdpass = path, timeout, fdpass
        self.connect_wait, self.chunk_size = connect_wait, chunk_size

    def check(self) -> None:
        """Start-up: the socket must exist (else this is no message's fault)."""
        try:
            ok = stat.S_ISSOCK(os.stat(self.path).st_mode)
        except OSError:
            ok = False
        if not ok:
            raise SystemExit(f"clamd socket {self.path} does not exist: is clamd running?")

    def connect(self) -> socket.socket:
        deadline = time.monotonic() + self.connect_wait
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
                return sock
            except OSError as exc:
                sock.close()
                if exc.errno not in _RETRY or time.monotonic() >= deadline:
                    raise Dropped(f"cannot connect to clamd at {self.path}: {exc.strerror}") from None
                time.sleep(0.2)

    def scan(self, path: str) -> str:
        return self.scan_fildes(path) if self.fdpass else self.scan_stream(path)

    def scan_fildes(self, path: str) -> str:
        """Hand clamd the open file (``zFILDES``, SCM_RIGHTS over the Unix socket):
        nothing is copied through the socket, and clamd needs no access to the path."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            with self.connect() as sock:
                try:
                    sock.sendall(b"zFILDES\0")
                    sock.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
                except TimeoutError:
                    raise Dropped(f"clamd took no data for {self.timeout:.0f}s") from None
                except OSError:
                    pass  # clamd may have answered and closed: read its answer
                return parse_reply(self._reply(sock))
        finally:
            os.close(fd)

    def scan_stream(self, path: str) -> str:
        with open(path, "rb") as fh, self.connect() as sock:
            try:
                sock.sendall(b"zINSTREAM\0")
                while chunk := fh.read(self.chunk_size):
                    sock.sendall(struct.pack("!L", len(chunk)) + chunk)
                sock.sendall(struct.pack("!L", 0))
            except TimeoutError:
                raise Dropped(f"clamd took no data for {self.timeout:.0f}s") from None
            except OSError:
                pass  # clamd may have answered and closed (e.g. size limit): read its answer
            return parse_reply(self._reply(sock))

    def _reply(self, sock: socket.socket) -> bytes:
        buf = b""
        try:
            while not buf.endswith(b"\0"):
                data = sock.recv(4096)
                if not data:
                    break
                buf += data
        except TimeoutError:
            raise Dropped(f"clamd gave no answer within {self.timeout:.0f}s") from None
        except OSError as exc:
            raise Dropped(f"clamd dropped the connection mid-message ({exc.strerror})") from None
        if not buf:
            raise Dropped("clamd closed the connection mid-message without an answer")
        return buf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="qsup-clamd-worker")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--connect-wait", type=float, default=10.0)
    parser.add_argument("--chunk-size", type=int, default=65536)
    parser.add_argument("--stream", action="store_true", help="zINSTREAM instead of passing the file")
    args = parser.parse_args(argv)
    clamd = Clamd(args.socket, args.timeout, args.connect_wait, args.chunk_size, fdpass=not args.stream)
    serve(lambda path, qid: clamd.scan(path), setup=clamd.check, argv=[])


if __name__ == "__main__":
    main()
