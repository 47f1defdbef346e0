"""Provider drivers: one Driver protocol (base.py), one module per provider kind, a lazy registry."""
