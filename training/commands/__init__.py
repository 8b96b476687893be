"""Command modules of the `learnrec` CLI, one per stage."""
