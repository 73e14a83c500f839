"""Clinical records: the document registry and repository (docs/records.md)."""
