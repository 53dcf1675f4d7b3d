"""Tests of the core runtime (issue 2): nodes, validation, engine, store, API, CLI, daemon."""
