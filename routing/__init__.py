"""leadrouter core: pure scoring, routing, cadence and message logic (no I/O)."""
