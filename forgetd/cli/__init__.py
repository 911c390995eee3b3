"""Click commands, one module per noun. Each command parses, calls one `forgetd.api` function, renders."""
