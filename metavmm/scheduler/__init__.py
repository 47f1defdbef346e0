"""The graph-based scheduler over an immutable catalog snapshot (filters, costs, plans)."""
