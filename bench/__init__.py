"""Performance benchmarks (issue 7): `python -m bench` measures PPO step throughput against TRL, BRME
k-head scoring against k separate reward models, pipeline overhead and peak memory, in one run, and
prints a table of ratios. Sizes are flags (`python -m bench --help`)."""
