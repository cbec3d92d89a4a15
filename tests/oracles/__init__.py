"""Reference implementations the tests (and the benchmarks' baselines) compare bis_prm with: plain, loop-by-loop
re-implementations of the paper's `build_bis_subset.py` and of the VisualPRM evaluator."""
