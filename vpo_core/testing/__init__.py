"""Tools for tests and benchmarks that stand in for outside services, for real: a local
OpenAI-compatible HTTP server with scripted latency and faults."""
