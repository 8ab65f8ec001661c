"""A hello-world server for the serving bench's yardsticks: it answers every POST with a fixed
predict answer, as fast as its HTTP stack can.

``--stack starlette``: a Starlette app on uvicorn with h11 and asyncio, the stack this project
served with before, kept as a fixed yardstick so that a faster stack counts. ``--stack ours``:
a bare ASGI app on the stack the server runs on (uvicorn with httptools and uvloop, our
listening socket). Prints ``{"event": "serving", "port": N}`` once it listens.
"""

from __future__ import annotations

import argparse
import json
import sys

import uvicorn

from consumer.serving.http import listen

ANSWER = json.dumps({"predictions": [[0.1] * 10]}).encode()
_HEADERS = [(b"content-type", b"application/json")]


async def bare_app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def starlette_app():
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def predict(request):
        await request.body()
        return Response(ANSWER, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", predict, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stack", choices=("starlette", "ours"), required=True)
    args = parser.parse_args()
    sock = listen("127.0.0.1", 0)
    if args.stack == "starlette":
        config = uvicorn.Config(starlette_app(), http="h11", loop="asyncio", log_config=None,
                                access_log=False, lifespan="off")
    else:
        config = uvicorn.Config(bare_app, http="httptools", loop="uvloop", log_config=None,
                                access_log=False, lifespan="off")
    print(json.dumps({"event": "serving", "port": sock.getsockname()[1]}), flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    sys.exit(0)


if __name__ == "__main__":
    main()
