"""Models: birder names, loading, decoding and batched inference, and birder's result files."""
