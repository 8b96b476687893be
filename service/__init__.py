"""learnrec service package."""
