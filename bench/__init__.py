"""smsledger's benchmarks: scripts that print figures, each a ratio against a baseline of the run.

``python -m bench --help`` lists the options; BENCHMARKS.md records a full run and how to read it.
Nothing here is imported by `ledger` or `scheduler`, and CI only checks that the scripts still run
(``tests/integration/test_bench_smoke.py`` at ``--size tiny``), never how fast.
"""
