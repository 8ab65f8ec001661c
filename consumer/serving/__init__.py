"""The model server over the handoff's manager: the models it serves and their config, the
protocol-neutral calls, and the fronts over them (REST with TF Serving's JSON codec, gRPC),
batching, admission and metrics."""
