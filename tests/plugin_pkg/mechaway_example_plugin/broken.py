"""A plugin that fails at import: the daemon must report and skip it."""

raise RuntimeError("this plugin is broken on purpose")
