"""What the producer and the consumer agree on: the graph contract, the export dir's layout and
its commit protocol, the datasets, graph building, logs, CLI plumbing and the TensorFlow import."""
