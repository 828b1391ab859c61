"""The offline synthetic visual world (scenes, skills, TFDS builder, export, tokenizer)."""
