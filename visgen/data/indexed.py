"""The random-access protocol shared by the generated (embedded) sources."""


class IndexedSource:
  """`len(source)` examples, generated on demand by `source[index]`."""

  num_examples: int

  def __len__(self) -> int:
    return self.num_examples

  def check_index(self, index) -> int:
    """`index` as an int, or IndexError when outside [0, len)."""
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f'index {index} out of range [0, {len(self)}).')
    return index
