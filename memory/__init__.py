"""Memory of a stream: per-frame KV blocks, the token budget that decides which stay resident."""
