"""Python client of the Strand REST API, and (in `strand_client.testing`) a faithful fake server."""
