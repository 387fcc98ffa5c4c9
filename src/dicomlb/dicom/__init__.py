"""The DIMSE engine: sans-IO protocol cores and their asyncio shells."""
