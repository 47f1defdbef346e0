"""The resource catalog: data model, database sessions, migrations and queries."""
