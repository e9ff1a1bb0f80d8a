"""Benchmarks behind ``quadmix-stream bench``: each measures its own baseline in the same run."""
