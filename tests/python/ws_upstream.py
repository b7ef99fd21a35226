"""The WebSocket upstream of tests/websocket.rs: an echo server on 127.0.0.1:PORT.

Paths: /echo echoes every message; /headers first sends the handshake's request headers as a
JSON text message, then echoes; /server-closes echoes one message, then closes with 1000;
/reject answers the handshake with 403 (no upgrade).
"""

import asyncio
import http
import json
import sys

from websockets.asyncio.server import serve


async def handler(ws):
    path = ws.request.path
    if path.startswith("/headers"):
        await ws.send(json.dumps([[k, v] for k, v in ws.request.headers.raw_items()]))
    if path.startswith("/server-closes"):
        msg = await ws.recv()
        await ws.send(msg)
        await ws.close(1000, "server done")
        return
    async for msg in ws:
        await ws.send(msg)


def process_request(conn, request):
    if request.path.startswith("/reject"):
        return conn.respond(http.HTTPStatus.FORBIDDEN, "no websocket here\n")
    return None


async def main(port):
    async with serve(
        handler,
        "127.0.0.1",
        port,
        process_request=process_request,
        max_size=None,
        ping_interval=None,
    ):
        print("ready", flush=True)
        await asyncio.get_running_loop().create_future()


asyncio.run(main(int(sys.argv[1])))
