"""Pieces every trainer shares: tokenizer, model, LR schedule, evaluation sets, launching."""
