"""One module per pipeline stage; each is idempotent and checkpoints in the run store."""
