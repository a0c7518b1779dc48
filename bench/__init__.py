"""txguard benchmarks: `make bench` (python -m bench). Every figure is a ratio against a baseline measured
in the same run, because the machines are shared and absolute times drift between runs."""
