"""A small keep-alive client for TF Serving's REST API, for the demo, the bench and the tests.

It sets TCP_NODELAY, as urllib3 and other real clients do: ``http.client`` writes the headers and
the body in two sends, and with Nagle's algorithm the second waits for the server's delayed ACK,
which adds about 40 ms to every request.
"""

from __future__ import annotations

import http.client
import json
import socket


class RestClient:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            connection.connect()
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._connection = connection
        return self._connection

    def call(self, method: str, path: str, body: object = None,
             raw: bool = False) -> tuple[int, dict, object]:
        """Status, headers (lower-case names) and the body: parsed if JSON (unless ``raw``),
        else bytes. A broken connection is closed, so the next call opens a new one."""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        reused = self._connection is not None
        try:
            connection = self._connect()
            connection.request(method, path, body=data)
            response = connection.getresponse()
            payload = response.read()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            self.close()
            if not reused:
                raise
            # The server closed the idle keep-alive connection before this request reached it
            # (it was never read): once more, on a new connection, as HTTP clients do.
            return self.call(method, path, body, raw)
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        headers = {k.lower(): v for k, v in response.getheaders()}
        if headers.get("content-type") == "application/json" and not raw:
            payload = json.loads(payload)
        return response.status, headers, payload

    def predict(self, model: str, body: object) -> tuple[int, dict, object]:
        return self.call("POST", f"/v1/models/{model}:predict", body)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
