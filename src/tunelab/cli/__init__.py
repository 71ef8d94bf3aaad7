"""The `tunelab` command: one module per command group, each thin (parse, call one recipe or service, print)."""
