"""The outermost layer: the FastAPI webhook and admin API, and the `sectra-bridge` CLI."""
