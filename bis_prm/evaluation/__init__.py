"""Evaluation: `visualprocessbench` reads a benchmark, `runner` scores it with a PRM (`bis-prm eval`), `metrics` holds
the `visualprocessbench` evaluate metric, and `best_of_n` reranks candidate solutions (`bis-prm bon`)."""
