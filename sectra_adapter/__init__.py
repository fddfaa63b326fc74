"""Everything the bridge says to or hears from Sectra, on top of the `sectra_client` package.

`client.SectraAdapter` (calls, streaming download, token refresh), `urls` (callback
allow-list), `headers` (webhook response headers), `results` (Sectra `Result`s from
a `summary.RunSummary`), `progress.ResultPublisher` (one result per run), `gate`
(slide suitability), `invocation` (webhook body parsing), `errors`.
"""
