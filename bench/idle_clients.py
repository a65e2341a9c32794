"""Idle keep-alive clients for bench/compare.sh, on loopback only.

Usage: idle_clients.py HOST PORT CONNECTIONS MAX_SECONDS

Opens CONNECTIONS connections (at most 200 connecting at once), sends one `GET /small` on
each, reads the whole response, and keeps the connection open without sending more. Once
every connection has been tried it prints `ready OPENED FAILED` on one line. It then keeps the
connections open until SIGTERM or SIGINT, or MAX_SECONDS after the start, whichever comes first.
Before it closes them it prints `still_open N`, the number that the server had not closed.
The process needs a file descriptor limit above CONNECTIONS (`ulimit -n`).
"""

import asyncio
import signal
import sys

REQUEST = b"GET /small HTTP/1.1\r\nHost: bench.local\r\n\r\n"
CONNECT_CONCURRENCY = 200
RESPONSE_TIMEOUT_S = 30.0


async def read_response(reader):
    """Read one HTTP/1.1 200 response with a Content-Length or chunked body, or raise ValueError."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    if not status_line.startswith("HTTP/1.1 200"):
        raise ValueError(f"unexpected status line {status_line!r}")
    headers = {}
    for line in header_lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        await reader.readuntil(b"0\r\n\r\n")
    if headers.get("connection", "").lower() == "close":
        raise ValueError("the server closed the connection after the response")


async def open_one(host, port, limiter, connections):
    """Open one connection, complete one request on it, and return whether that succeeded."""
    async with limiter:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), RESPONSE_TIMEOUT_S
            )
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            writer.write(REQUEST)
            await writer.drain()
            await asyncio.wait_for(read_response(reader), RESPONSE_TIMEOUT_S)
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            writer.close()
            return False
        connections.append((reader, writer))
        return True


def is_open(reader, writer):
    return not (reader.at_eof() or reader.exception() or writer.transport.is_closing())


async def main():
    host, port = sys.argv[1], int(sys.argv[2])
    count, max_seconds = int(sys.argv[3]), float(sys.argv[4])
    if host not in ("127.0.0.1", "::1", "localhost"):
        sys.exit(f"error: host {host!r} is not a loopback address; this client only targets servers on this machine")

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    deadline = loop.time() + max_seconds

    limiter = asyncio.Semaphore(CONNECT_CONCURRENCY)
    connections = []
    opened = await asyncio.gather(*(open_one(host, port, limiter, connections) for _ in range(count)))
    print(f"ready {sum(opened)} {count - sum(opened)}", flush=True)

    try:
        await asyncio.wait_for(stop.wait(), max(0.0, deadline - loop.time()))
    except asyncio.TimeoutError:
        pass
    print(f"still_open {sum(is_open(r, w) for r, w in connections)}", flush=True)
    for _, writer in connections:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main())
