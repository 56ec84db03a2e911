"""Baseline: the Python side of a hand-written Elixir Port ({:packet, 4}).

Reads messages framed by a 4-byte big-endian length from stdin and writes one
reply per message, framed the same way, to stdout. A message is one tag byte
and a body:

    b"J" + JSON object  -> JSON of the decoded object, re-encoded (echo)
    b"B" + raw bytes    -> the same raw bytes (binary echo, no JSON, no base64)

Exits when stdin closes. Only the standard library.
"""

import json
import struct
import sys


def main() -> None:
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    header = struct.Struct(">I")
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return
        (length,) = header.unpack(head)
        body = stdin.read(length)
        if len(body) < length:
            return
        tag, payload = body[:1], body[1:]
        if tag == b"J":
            reply = json.dumps(json.loads(payload), separators=(",", ":")).encode()
        elif tag == b"B":
            reply = payload
        else:
            reply = b'{"error":"unknown tag"}'
        stdout.write(header.pack(len(reply)))
        stdout.write(reply)
        stdout.flush()


if __name__ == "__main__":
    main()
