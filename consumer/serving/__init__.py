"""The model server over the handoff's manager: protocol-neutral calls, TF Serving's JSON codec,
the HTTP front and its metrics, and the wiring that runs them beside the consumer's loop."""
