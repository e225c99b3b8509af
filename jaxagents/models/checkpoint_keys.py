"""What the checkpoint converters of every model family share for their error messages."""


def preview_keys(keys: list[str], limit: int = 8) -> str:
  """The first `limit` keys as a list literal, '...' closing it when there are more (for missing/unexpected-key
  errors that name the keys without printing thousands of them)."""
  return str(keys[:limit])[:-1] + (", ...]" if len(keys) > limit else "]")
