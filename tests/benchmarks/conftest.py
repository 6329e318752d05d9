"""The benchmarks here are scripts (`python tests/benchmarks/NAME.py [--quick]`), not tests: pytest must not
import or collect them (they start their own Kafka and ClickHouse and run for minutes)."""

collect_ignore_glob = ["*.py"]
