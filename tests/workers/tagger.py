"""A scanner that tags every message in place (as a scanner adding `X-Scanned: yes`
does): the file qsup hands on is not the bytes qsup fingerprinted."""

from quarantine.worker import serve


def scan(path, qid):
    with open(path, "r+b") as fh:
        body = fh.read()
        fh.seek(0)
        fh.write(b"X-Scanned: yes\r\n" + body)
    return "clean"


if __name__ == "__main__":
    serve(scan)
