"""Operating Palette: Prometheus metrics, the health and metrics HTTP endpoints, and gateway shards."""
