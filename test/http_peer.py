#!/usr/bin/python3
"""http_peer.py: a scripted HTTP/1.1 peer for the tests of the relay's own
HTTP client (test/t/033_http_client.pl).

Python 3.11 standard library only; raw sockets, so that it can answer in
ways no well-behaved server library would (folded headers, garbage, extra
bytes, answers cut off or split into single bytes).  It listens on
127.0.0.1 only.

Usage:
  http_peer.py --port-file PATH --log PATH

It writes the port it listens on to --port-file (tmp file + rename) and
serves until SIGTERM.  Every request it reads is appended to --log as one
JSON line: {"conn": connection number, "nth": requests on that connection
so far (1 for the first), "method", "target", "version", "headers" (names
lower case), "body", "length_ok" (Content-Length matches the body)}.

What it answers depends on the first segment of the request's path:
  length     200 with Content-Length: 2, keep-alive
  chunked    200, a chunked body of 3 + 4 bytes with a chunk extension and
             a trailer field
  split      like length, written one byte at a time
  interim    100 Continue and 103 Early Hints, then 201 without a body
  http10     an HTTP/1.0 answer without a length, the body ends at close
  close      200 with Connection: close, then closes
  idledrop   200 keep-alive, then closes the connection without a word
  extra      200 with Content-Length: 2 and 5 more bytes after the body
  nothing    closes the connection without answering
  fold       a response with a folded header line
  garbage    a line that is not an HTTP status line
  twolengths two different Content-Length values
  bigheader  a header section over 64 kB
  silent     reads the request and never answers (until the peer closes)
  retry      503 with Retry-After: 1
"""

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time

lock = threading.Lock()
log_file = None
conn_counter = 0


# kind: (the bytes of the answer, whether the connection ends after it)
ANSWERS = {
    "length": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    "chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3;name=value\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n", False),
    "split": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsplit", False),
    "interim": (b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", False),
    "http10": (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold style", True),
    "close": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", True),
    "idledrop": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True),
    "extra": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", False),
    "nothing": (b"", True),
    "fold": (b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok", False),
    "garbage": (b"HELLO THERE\r\n\r\n", True),
    "twolengths": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", True),
    "bigheader": (b"HTTP/1.1 200 OK\r\n" + (b"X-Big: " + b"x" * 7000 + b"\r\n") * 10 +
                  b"Content-Length: 2\r\n\r\nok", True),
    "retry": (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
              b"Content-Length: 4\r\n\r\nbusy", False),
}
NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", False)


def read_request(sock, buf):
    """One request from sock (buf holds bytes already read): (request, rest),
    or (None, b"") at end of stream."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None, b""
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            return None, b""
        rest += data
    body, rest = rest[:length], rest[length:]
    return {"method": method, "target": target, "version": version,
            "headers": headers, "body": body.decode("utf-8", "replace"),
            "length_ok": len(body) == length}, rest


def serve(sock, number):
    buf = b""
    nth = 0
    try:
        while True:
            req, buf = read_request(sock, buf)
            if req is None:
                return
            nth += 1
            req["conn"] = number
            req["nth"] = nth
            with lock:
                log_file.write(json.dumps(req) + "\n")
                log_file.flush()
            kind = req["target"].lstrip("/").split("/")[0].split("?")[0]
            if kind == "silent":
                while sock.recv(65536):
                    pass
                return
            data, close = ANSWERS.get(kind, NOT_FOUND)
            if kind == "split":
                for i in range(len(data)):
                    sock.sendall(data[i:i + 1])
                    time.sleep(0.001)
            elif data:
                sock.sendall(data)
            if close:
                return
    except OSError:
        return
    finally:
        try:
            sock.close()
        except OSError:
            pass


def main():
    global log_file, conn_counter
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    log_file = open(args.log, "a", encoding="utf-8")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write("%d\n" % listener.getsockname()[1])
    os.rename(tmp, args.port_file)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn_counter += 1
        threading.Thread(target=serve, args=(conn, conn_counter), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
