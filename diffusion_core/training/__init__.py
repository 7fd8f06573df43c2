"""Building the embedded default model: corpus, tokenizer, training (CPU or GPU)."""
