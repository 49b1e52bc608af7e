"""zetl sinks: each subpackage is one sink plugin (registered under the `zetl.sinks` entry points)."""
