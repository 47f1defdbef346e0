"""OCCI 1.2: model, parsers, renderers and aiohttp routes, as a view over the broker's services."""
