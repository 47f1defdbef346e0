"""The broker: aiohttp application, REST API, auth, quotas, operations, configuration and CLI."""
