"""Team mode: shared servers on PostgreSQL, workers on a work pool, a DVC remote (docs/team.md)."""
