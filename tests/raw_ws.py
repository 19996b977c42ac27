"""A WebSocket client by hand, for attacks a well-behaved client library will not make: frame headers that claim more
than follows, payloads cut short, bytes dribbled one at a time."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from collections.abc import Callable


async def upgrade(host: str, port: int, path: str = "/gateway", headers: str = "") -> tuple[int, RawSocket]:
    """(HTTP status, socket) of an upgrade request; the socket is usable when the status is 101."""
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        ).encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    return int(head.split(b" ", 2)[1]), RawSocket(reader, writer)


def header(length: int, opcode: int = 0x1, fin: bool = True) -> bytes:
    """A masked frame header claiming `length` bytes, with a zero mask: the payload is sent as is."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes([first, 0x80 | length]) + b"\0\0\0\0"
    if length < 1 << 16:
        return bytes([first, 0x80 | 126]) + struct.pack("!H", length) + b"\0\0\0\0"
    return bytes([first, 0x80 | 127]) + struct.pack("!Q", length) + b"\0\0\0\0"


def text_frame(payload: str | bytes) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return header(len(data)) + data


class RawSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> bool:
        """False when the gateway has already closed the connection."""
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    async def frames(self, within_s: float = 30) -> list[tuple[int, bytes]]:
        """Every frame the gateway sends until it closes the TCP connection: (opcode, payload)."""
        return await self.frames_until(lambda _: False, within_s)

    async def frames_until(
        self, done: Callable[[list[tuple[int, bytes]]], bool], within_s: float = 30
    ) -> list[tuple[int, bytes]]:
        """The frames the gateway sends until `done(frames so far)`, or it closes the TCP connection."""
        out: list[tuple[int, bytes]] = []
        buffer = b""
        try:
            async with asyncio.timeout(within_s):
                while not done(out) and (chunk := await self.reader.read(65536)):
                    buffer += chunk
                    while len(buffer) >= 2:
                        length, start = buffer[1] & 0x7F, 2
                        if length == 126:
                            length, start = struct.unpack("!H", buffer[2:4])[0], 4
                        elif length == 127:
                            length, start = struct.unpack("!Q", buffer[2:10])[0], 10
                        if len(buffer) < start + length:
                            break
                        out.append((buffer[0] & 0x0F, buffer[start : start + length]))
                        buffer = buffer[start + length :]
        except (ConnectionError, OSError):
            pass
        return out

    def close(self) -> None:
        self.writer.close()


def close_code(frames: list[tuple[int, bytes]]) -> int | None:
    for opcode, payload in frames:
        if opcode == 0x8 and len(payload) >= 2:
            return int(struct.unpack("!H", payload[:2])[0])
    return None


def texts(frames: list[tuple[int, bytes]]) -> list[dict[str, object]]:
    return [json.loads(payload) for opcode, payload in frames if opcode == 0x1]
