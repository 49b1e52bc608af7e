"""A Redshift-compatible test target: a wire-protocol proxy and a SQL shim over a private Postgres."""
