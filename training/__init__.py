"""learnrec training package."""
