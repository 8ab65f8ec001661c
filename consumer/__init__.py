"""The consumer: watch an export dir, load each new version, and evaluate it, keep training it,
or serve it (the serving package, ``consumer.serving``, holds the model server)."""
