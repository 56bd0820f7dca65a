"""edgecloud.cloud_node: the cloud daemon (LLM sessions with KV cache, batched verification, split tail)."""
