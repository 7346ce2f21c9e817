"""The kernel: the vocabulary every layer of cityneuron shares.

Records (`Reading`, `Detection`, `Event`), the clock, durations, cancellation helpers,
YAML source positions, geodesy, the component and readiness protocols, backoff and the
inference protocol between cameras and models. It imports nothing of ours (the import
contracts in pyproject.toml check it), so drivers, models, rules and the daemon can all
build on it. See docs/architecture.md.
"""
