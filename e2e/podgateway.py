"""The host's services as pods see them: ``python -m e2e.podgateway`` (started by ``up``).

The control plane and Prometheus listen on 127.0.0.1 only, which inside a pod's network
namespace is the pod itself. This relay listens on the node's address on the pod bridge
(``10.244.<16N>.1``) on the same ports and passes each connection on to 127.0.0.1, so a
pod reaches the API server at ``https://<node>:<port>`` (the agent sets
``KUBERNETES_SERVICE_HOST`` to it; the API server's certificate names it) and Prometheus
at ``http://<node>:<port>``. The node's address exists on this machine only (the bridge),
so nothing outside reaches these ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

CHUNK = 64 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _relay(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        # Nothing listens there (Prometheus not started yet): the pod sees a refusal.
        writer.close()
        return
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        for w in (writer, up_writer):
            with contextlib.suppress(OSError, RuntimeError):
                w.close()


async def serve(listen: str, ports: Sequence[int]) -> None:
    servers = []
    for port in ports:

        async def handle(
            r: asyncio.StreamReader, w: asyncio.StreamWriter, port: int = port
        ) -> None:
            await _relay(port, r, w)

        servers.append(await asyncio.start_server(handle, listen, port, reuse_address=True))
    print(f"relaying {listen}:{','.join(map(str, ports))} -> 127.0.0.1", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.podgateway", description=__doc__)
    parser.add_argument("--listen", required=True, help="the node's address on the bridge")
    parser.add_argument("--port", type=int, action="append", required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
