"""Serve mode's wiring: the consumer's loop loads versions on the calling thread while the HTTP
front answers from the live one on its own; at a signal, requests in flight drain before the
last version is closed."""

from __future__ import annotations

import threading

from consumer.loop import Config, Consumer, Stats
from consumer.manager import Manager
from consumer.serving.calls import Api
from consumer.serving.http import HttpServer
from consumer.serving.metrics import ServingMetrics
from shared import cli, logs

log = logs.get("consumer")


def serve(config: Config, stop: threading.Event, *, host: str, port: int,
          model_name: str | None) -> Stats:
    """Serve ``config.export_dir``'s versions on ``host:port`` until ``stop`` is set."""
    manager, metrics = Manager(), ServingMetrics()
    api = Api(manager, config.export_dir, model_name)
    try:
        server = HttpServer(api, metrics, host, port)
    except OSError as err:
        cli.fail("consumer", f"cannot listen on {host}:{port}: {err.strerror or err}")
    consumer = Consumer(config, stop, manager, metrics)
    log.info("consumer_started", export_dir=str(config.export_dir), source=config.source,
             mode=config.mode, until_step=config.until_step)
    server.start()
    model = api.served_name()  # None until export.json exists: then it is read at first use
    log.info("serving", host=server.host, port=server.port, model=model,
             url=f"http://{server.host}:{server.port}/v1/models/{model or '<name>'}")
    try:
        return consumer.run()
    finally:
        server.stop()
        manager.close()
