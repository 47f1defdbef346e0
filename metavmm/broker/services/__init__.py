"""Broker services shared by the OCCI and REST views (the one place each change is made)."""
