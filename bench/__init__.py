"""txguard benchmarks: `make bench` (python -m bench). Every figure is a ratio against a baseline measured
in the same run, because the machines are shared and absolute times drift between runs."""

import os

# Set before txguard is imported: metrics would otherwise be buffered for every call made outside a
# handler and printed in bulk.
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
