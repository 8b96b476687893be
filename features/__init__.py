"""learnrec features package."""
