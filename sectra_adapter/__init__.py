"""Everything the bridge says to or hears from Sectra, on top of the `sectra_client` package."""
