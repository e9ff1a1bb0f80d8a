"""Training entry points run with ``torchrun`` (installed as ``quadmix_stream.trainers``)."""
