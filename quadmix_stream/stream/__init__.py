"""The stream: params → copies per document, the epoch order, the loader and its state."""
