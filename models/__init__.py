"""learnrec models package."""
