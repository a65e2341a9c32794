"""Slow clients for the benchmark: slowloris connections and slow readers, on loopback only.

Usage: slow_clients.py HOST PORT SLOWLORIS READERS SECONDS

Slowloris connections send a request header one byte per second and reconnect when the
proxy closes them. Slow readers request /big and read 1 KiB per second. Everything stops
after SECONDS; the script prints how many connections of each kind it opened.
"""

import asyncio
import sys

HEADER = b"GET /small HTTP/1.1\r\nHost: bench.local\r\n" + b"X-Padding: " + b"a" * 200 + b"\r\n\r\n"


async def slowloris(host, port, stop, counts):
    while not stop.is_set():
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        counts["slowloris"] += 1
        try:
            for byte in HEADER:
                if stop.is_set():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1.0)
        except OSError:
            pass
        writer.close()


async def slow_reader(host, port, stop, counts):
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        counts["readers"] += 1
        try:
            writer.write(b"GET /big HTTP/1.1\r\nHost: bench.local\r\n\r\n")
            await writer.drain()
            while not stop.is_set():
                data = await reader.read(1024)
                if not data:
                    break
                await asyncio.sleep(1.0)
        except OSError:
            pass
        writer.close()


async def main():
    host, port = sys.argv[1], int(sys.argv[2])
    slowloris_count, reader_count, seconds = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit("slow_clients.py only targets loopback")
    stop = asyncio.Event()
    counts = {"slowloris": 0, "readers": 0}
    tasks = [asyncio.create_task(slowloris(host, port, stop, counts)) for _ in range(slowloris_count)]
    tasks += [asyncio.create_task(slow_reader(host, port, stop, counts)) for _ in range(reader_count)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait(tasks, timeout=5)
    print(f"slowloris connections {counts['slowloris']}, slow reader connections {counts['readers']}")


asyncio.run(main())
