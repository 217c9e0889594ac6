"""The embedded default: its pre-training and the model card written from runs it makes itself."""
