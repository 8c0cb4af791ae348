"""The far end of the tunnel benchmark: plain TCP, a one-byte protocol. Not a test.

    python benchmarks/blaster.py PORT

``D`` + 8-byte size: send that many bytes, then close. ``U`` + size: read that
many, then answer ``K``. ``E``: answer ``.`` (the first round trip of a new
connection).
"""

from __future__ import annotations

import asyncio
import struct
import sys

CHUNK = 256 * 1024


async def _blaster(port: int) -> None:
    payload = b"\0" * CHUNK

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            command = await reader.readexactly(1)
            if command == b"E":
                writer.write(b".")
            else:
                (size,) = struct.unpack("!Q", await reader.readexactly(8))
                if command == b"D":
                    while size > 0:
                        writer.write(payload[: min(size, CHUNK)])
                        size -= min(size, CHUNK)
                        await writer.drain()
                else:
                    while size > 0:
                        size -= len(await reader.read(min(size, 1 << 20)))
                    writer.write(b"K")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_blaster(int(sys.argv[1])))
