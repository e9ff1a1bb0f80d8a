"""Where files live and how they are written: local folders and object stores, atomic writes."""
