"""A small namespaced registry: names in configs map to classes/functions.

Unknown names raise a ValueError that lists the valid choices, so a config typo
is reported with its fix.
"""

from typing import Any
from typing import Callable


class Registry:
  """Maps names to objects; refuses duplicates; errors list valid names."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, Any] = {}

  def register(self, name: str) -> Callable[[Any], Any]:
    def decorator(obj):
      if name in self._items:
        raise ValueError(f'{self.kind} {name!r} is registered twice.')
      self._items[name] = obj
      return obj

    return decorator

  def get(self, name: str) -> Any:
    if name not in self._items:
      raise ValueError(
          f'Unknown {self.kind} {name!r}. Valid choices: '
          f'{", ".join(sorted(self._items))}.'
      )
    return self._items[name]

  def build(self, name: str, **kwargs) -> Any:
    """Calls the registered factory `name` with kwargs; bad kwargs raise a
    ValueError naming the factory (instead of a bare TypeError)."""
    factory = self.get(name)
    try:
      return factory(**kwargs)
    except TypeError as e:
      raise ValueError(f'Bad arguments for {self.kind} {name!r}: {e}') from e

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items
