"""Acceptance tests: the CLI as subprocesses. A package so its module names (test_privacy) do not clash
with tests/unit under pytest's default import mode."""
