"""The QuaDMix math as pure functions over numpy arrays: hashing, sampling function, params."""
