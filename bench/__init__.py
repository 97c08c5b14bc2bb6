"""Benchmarks of warpsparse against spconv on the bundled LiDAR scan (``python -m bench --help``)."""
