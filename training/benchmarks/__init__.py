"""Benchmarks run by `learnrec bench`: data generation, training, serving; results go to bench/RESULTS.md."""
