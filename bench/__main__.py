"""`python -m bench ...` runs the benchmarks (see `bench.run`)."""

from bench.run import main

raise SystemExit(main())
