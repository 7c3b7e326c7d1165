"""Discord cogs: thin presentation that hands work to `bot/`."""
