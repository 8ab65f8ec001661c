"""The producer: trains a graph model, alone or on a cluster, and publishes numbered checkpoints
and SavedModels into an export dir through the commit protocol."""
