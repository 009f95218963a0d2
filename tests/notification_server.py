"""A test notification server: owns org.freedesktop.Notifications, records what it is shown.

    python tests/notification_server.py RECORD

On the session bus in $DBUS_SESSION_BUS_ADDRESS (``unix:path=`` only).  The
D-Bus wire protocol is spoken here with the stdlib alone, little-endian, as
much of it as notify-send uses: Hello and RequestName, then
GetServerInformation, GetCapabilities and Notify answered; any other call
gets an UnknownMethod error.  RECORD gets ``ready`` once the name is owned,
then a line ``app<TAB>summary<TAB>body`` per notification.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from pathlib import Path

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
PATH, INTERFACE, MEMBER, ERROR_NAME, REPLY_SERIAL, DESTINATION, SENDER, SIGNATURE = range(1, 9)
NAME = "org.freedesktop.Notifications"


class Writer:
    """Marshalled values, aligned from the start of what is written."""

    def __init__(self) -> None:
        self.data = bytearray()

    def align(self, n: int) -> None:
        self.data += b"\0" * (-len(self.data) % n)

    def byte(self, value: int) -> None:
        self.data.append(value)

    def u32(self, value: int) -> None:
        self.align(4)
        self.data += struct.pack("<I", value)

    def string(self, value: str) -> None:
        encoded = value.encode()
        self.u32(len(encoded))
        self.data += encoded + b"\0"

    def signature(self, value: str) -> None:
        encoded = value.encode()
        self.byte(len(encoded))
        self.data += encoded + b"\0"

    def strings(self, values: list[str]) -> None:
        self.u32(0)
        at = len(self.data) - 4
        start = len(self.data)
        for value in values:
            self.string(value)
        struct.pack_into("<I", self.data, at, len(self.data) - start)


def message(
    kind: int, serial: int, fields: list[tuple[int, str, object]], signature: str, body: bytes
) -> bytes:
    if signature:
        fields = [*fields, (SIGNATURE, "g", signature)]
    w = Writer()
    w.data += b"l"
    w.byte(kind)
    w.byte(0)
    w.byte(1)
    w.u32(len(body))
    w.u32(serial)
    w.u32(0)
    at = len(w.data) - 4
    w.align(8)
    start = len(w.data)
    for code, type_code, value in fields:
        w.align(8)
        w.byte(code)
        w.signature(type_code)
        if type_code in "so":
            w.string(str(value))
        elif type_code == "u":
            w.u32(int(value))  # type: ignore[call-overload]
        else:
            w.signature(str(value))
    struct.pack_into("<I", w.data, at, len(w.data) - start)
    w.align(8)
    return bytes(w.data) + body


class Reader:
    """Values read from ``data`` from ``pos``, aligned on absolute offsets."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def align(self, n: int) -> None:
        self.pos += -self.pos % n

    def u32(self) -> int:
        self.align(4)
        (value,) = struct.unpack_from("<I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def string(self) -> str:
        n = self.u32()
        value = self.data[self.pos : self.pos + n].decode("utf-8", errors="replace")
        self.pos += n + 1
        return value

    def signature(self) -> str:
        n = self.data[self.pos]
        value = self.data[self.pos + 1 : self.pos + 1 + n].decode()
        self.pos += n + 2
        return value


def receive(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the bus went away")
        data += chunk
    return bytes(data)


def read_message(sock: socket.socket) -> tuple[int, int, dict[int, object], bytes]:
    head = receive(sock, 16)
    if head[0:1] != b"l":
        raise ValueError("a big-endian message: not spoken here")
    kind = head[1]
    body_length, serial, fields_length = struct.unpack_from("<III", head, 4)
    rest = receive(sock, fields_length + (-(16 + fields_length) % 8))
    whole = head + rest
    fields: dict[int, object] = {}
    r = Reader(whole, 16)
    while r.pos < 16 + fields_length:
        r.align(8)
        code = whole[r.pos]
        r.pos += 1
        type_code = r.signature()
        if type_code in "so":
            fields[code] = r.string()
        elif type_code == "u":
            fields[code] = r.u32()
        elif type_code == "g":
            fields[code] = r.signature()
        else:
            raise ValueError(f"header field of type {type_code!r}")
    return kind, serial, fields, receive(sock, body_length)


def main(record: Path) -> None:
    address = os.environ["DBUS_SESSION_BUS_ADDRESS"]
    path = address.removeprefix("unix:path=").split(",")[0]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
    if not sock.recv(4096).startswith(b"OK "):
        raise SystemExit("the bus refused us")
    sock.sendall(b"BEGIN\r\n")
    bus = [
        (PATH, "o", "/org/freedesktop/DBus"),
        (INTERFACE, "s", "org.freedesktop.DBus"),
        (DESTINATION, "s", "org.freedesktop.DBus"),
    ]
    sock.sendall(message(METHOD_CALL, 1, [*bus, (MEMBER, "s", "Hello")], "", b""))
    ask = Writer()
    ask.string(NAME)
    ask.u32(4)  # DBUS_NAME_FLAG_DO_NOT_QUEUE
    sock.sendall(
        message(METHOD_CALL, 2, [*bus, (MEMBER, "s", "RequestName")], "su", bytes(ask.data))
    )
    serial = 10
    with record.open("a", encoding="utf-8") as out:
        while True:
            kind, their_serial, fields, body = read_message(sock)
            if kind == METHOD_RETURN and fields.get(REPLY_SERIAL) == 2:
                out.write("ready\n")
                out.flush()
                continue
            if kind != METHOD_CALL:
                continue
            member = fields.get(MEMBER)
            reply = Writer()
            signature = ""
            if member == "GetServerInformation":
                for value in ("sysmon-test", "sysmon", "1", "1.2"):
                    reply.string(value)
                signature = "ssss"
            elif member == "GetCapabilities":
                reply.strings(["body"])
                signature = "as"
            elif member == "Notify":
                r = Reader(body)
                app, _replaces, _icon = r.string(), r.u32(), r.string()
                summary, text = r.string(), r.string()
                out.write(f"{app}\t{summary}\t{text}\n")
                out.flush()
                reply.u32(1)
                signature = "u"
            serial += 1
            back: list[tuple[int, str, object]] = [
                (REPLY_SERIAL, "u", their_serial),
                (DESTINATION, "s", fields.get(SENDER, "")),
            ]
            if signature:
                sock.sendall(message(METHOD_RETURN, serial, back, signature, bytes(reply.data)))
            else:
                error = Writer()
                error.string(f"no method {member}")
                unknown = (ERROR_NAME, "s", "org.freedesktop.DBus.Error.UnknownMethod")
                sock.sendall(message(ERROR, serial, [*back, unknown], "s", bytes(error.data)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
