"""In-package test helpers and fakes, for tests, benchmarks and plugin authors.

The daemon never imports this package. Import the module you need explicitly:
``mechaway.testing.broker`` (a private mosquitto), ``mechaway.testing.nodes``
(node types for tests). Nothing is imported here, so importing one never drags in
another (``nodes`` registers node types as a side effect).
"""
