"""The producer: trains a graph model and publishes checkpoints and SavedModels."""
