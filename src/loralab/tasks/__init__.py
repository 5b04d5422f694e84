"""What a task is to a model: examples encoded and batched (`batching`), and the loss a batch is scored by
(`objective`, with the causal-LM loss computed in chunks in `lm_loss`) — shared by training and measurement."""
