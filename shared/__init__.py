"""What the producer and the consumer agree on: graphs, the contract, datasets, layout, logs."""
