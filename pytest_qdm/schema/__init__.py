"""The JSON contract: typed, schema-versioned results and reports (pydantic; no torch)."""
