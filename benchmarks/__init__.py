"""The benchmarks of narrative-grounding, each a module run from the repository root with
``python -m benchmarks.<name>`` (``python -m benchmarks.run_all`` runs the suite and writes
docs/benchmarks.md)."""
