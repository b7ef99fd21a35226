"""The WebSocket client of tests/websocket.rs: runs one scenario against URL and prints what
happened, one fact per line, for the Rust test to check.

usage: ws_client.py URL SCENARIO [HEADER=VALUE ...]
"""

import asyncio
import os
import ssl
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


async def main(url, scenario, headers):
    kwargs = {"max_size": None, "ping_interval": None, "open_timeout": 10, "close_timeout": 5}
    if url.startswith("wss:"):
        ctx = ssl.create_default_context(cafile=os.environ["WS_CA"])
        kwargs["ssl"] = ctx
    try:
        ws = await connect(url, additional_headers=headers, **kwargs)
    except InvalidStatus as e:
        print("status", e.response.status_code)
        print("body", e.response.body.decode(errors="replace").strip())
        return
    print("status 101")
    async with ws:
        if scenario == "echo":
            text = "".join(chr(0x41 + i % 26) for i in range(1 << 20)) + "é"
            binary = bytes(i * 7 % 256 for i in range(1 << 20))
            for _ in range(2):
                await ws.send(text)
                got = await ws.recv()
                print("text", len(got), got == text)
                await ws.send(binary)
                got = await ws.recv()
                print("binary", len(got), got == binary)
        elif scenario == "headers":
            print("headers", await ws.recv())
        elif scenario == "client-closes":
            await ws.send("bye")
            print("echo", await ws.recv())
            await ws.close(1000, "client done")
            print("closed", ws.close_code)
        elif scenario == "server-closes":
            await ws.send("last")
            print("echo", await ws.recv())
            try:
                await ws.recv()
            except ConnectionClosed as e:
                print("closed", e.rcvd.code if e.rcvd else None)
        elif scenario == "idle":
            start = time.monotonic()
            try:
                await asyncio.wait_for(ws.recv(), 20)
                print("unexpected message")
            except ConnectionClosed:
                print("idle-closed %.1f" % (time.monotonic() - start))
            except asyncio.TimeoutError:
                print("still open after 20 s")
        else:
            raise SystemExit("unknown scenario " + scenario)


headers = [tuple(h.split("=", 1)) for h in sys.argv[3:]]
asyncio.run(main(sys.argv[1], sys.argv[2], headers))
