"""zetl sources: each subpackage is one source plugin (registered under the `zetl.sources` entry points)."""
