"""Benchmarks: each module measures one thing side by side with its baseline (``viq bench``)."""
