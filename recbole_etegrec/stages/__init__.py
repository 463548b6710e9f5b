"""Pipeline stages that run before a model is built: item embeddings, then the item tokenizer."""
