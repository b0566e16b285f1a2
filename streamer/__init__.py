"""Streaming video understanding engine: ingest live video into memory, answer questions from it."""
