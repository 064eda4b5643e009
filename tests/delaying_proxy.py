"""A TCP proxy on loopback that gives a store the latency of a remote one.

AWS S3 answers a request in tens of milliseconds; the suite's S3 server on loopback answers in well
under one, so anything whose speed comes from overlapping requests (listing folder by folder with
several listers) cannot show it there. This proxy holds each chunk a client sends for `delay`
seconds before passing it upstream, so every request waits that long, as it would on a network;
replies pass at once. asyncio, one thread, any number of connections.

    with delaying("http://127.0.0.1:8333", 0.025) as endpoint:
        ...  # talk to `endpoint` instead
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import urllib.parse
from typing import Iterator

CHUNK = 65536


@contextlib.contextmanager
def delaying(upstream: str, delay: float) -> Iterator[str]:
    """The proxy's endpoint (same scheme as `upstream`) for the block."""
    target = urllib.parse.urlparse(upstream)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def serve() -> asyncio.base_events.Server:
        server = await asyncio.start_server(
            lambda r, w: _connection(r, w, target.hostname, target.port, delay), "127.0.0.1", 0
        )
        port.append(server.sockets[0].getsockname()[1])
        return server

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(serve())
        ready.set()
        loop.run_forever()
        server.close()
        connections = asyncio.all_tasks(loop)  # clients that kept their connections open (pools)
        for task in connections:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*connections, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, name="delaying-proxy", daemon=True)
    thread.start()
    ready.wait()
    try:
        yield f"{target.scheme}://127.0.0.1:{port[0]}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


async def _connection(
    client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter, host: str, port: int, delay: float
) -> None:
    try:
        upstream_in, upstream_out = await asyncio.open_connection(host, port)
        await asyncio.gather(
            _pump(client_in, upstream_out, delay), _pump(upstream_in, client_out, 0.0), return_exceptions=True
        )
    except asyncio.CancelledError:  # the proxy is closing; returning (not raising) keeps asyncio quiet about it
        client_out.close()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay: float) -> None:
    """Copy one direction until it closes, each chunk held `delay` seconds first."""
    try:
        while chunk := await source.read(CHUNK):
            if delay:
                await asyncio.sleep(delay)
            sink.write(chunk)
            await sink.drain()
    finally:
        sink.close()
