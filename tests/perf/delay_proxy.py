#!/usr/bin/env python3
"""A TCP proxy that delays every byte by a fixed time in each direction, without limiting bandwidth:
a link with latency, for machines whose kernel lacks `tc netem` (sch_netem).

    python3 tests/perf/delay_proxy.py --listen 127.0.0.1:39092 --upstream 127.0.0.1:29092 --delay-ms 25

Run the broker behind it with `--set advertised.listeners=PLAINTEXT://127.0.0.1:39092`, so that
clients reach every broker through the proxy. A chunk read at time t is written at t + delay, in
order; reading goes on meanwhile, so a full bandwidth-delay product can be in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: collections.deque = collections.deque()
    ready = asyncio.Event()
    done = False

    async def send() -> None:
        while True:
            while not queue:
                if done:
                    writer.close()
                    return
                ready.clear()
                await ready.wait()
            due, chunk = queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while chunk := await reader.read(1 << 20):
            queue.append((time.monotonic() + delay, chunk))
            ready.set()
    except ConnectionError:
        pass
    finally:
        done = True
        ready.set()
        try:
            await sender
        except ConnectionError:
            pass


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay (the round trip is twice this)")
    args = parser.parse_args()
    delay = args.delay_ms / 1000
    up_host, up_port = args.upstream.rsplit(":", 1)

    async def handle(client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(up_host, int(up_port), limit=1 << 22)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, up_writer, delay), pipe(up_reader, client_writer, delay))

    host, port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, host, int(port), limit=1 << 22)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
