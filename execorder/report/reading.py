"""Reading a report's fields from JSON data, checked: a wrong field is named, not trusted.

A report file may come from anywhere (an old version, a hand edit, a broken
disk): each field is checked for its type as it is read, and the first one
that is wrong is named by its path (``modules[3].index``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from execorder.errors import SchemaError

_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, float):
        return "a number with a fraction"
    for kind, name in _NAMES.items():
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _is(value: Any, kind: type) -> bool:
    if kind is int:  # JSON true is not 1
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is dict:
        return isinstance(value, Mapping)
    return isinstance(value, kind)


_REQUIRED = object()


class Fields:
    """The fields of one JSON object, read with their types checked.

    Args:
        data: The object.
        where: Its path in the document, for messages (``"modules[3]"``).

    Raises:
        SchemaError: If ``data`` is not an object.
    """

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise SchemaError(f"{where} must be an object, not {_kind(data)}")
        self.data, self.where = data, where

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, *kinds: type, default: Any = _REQUIRED) -> Any:
        """The field ``key``, which must be of one of ``kinds`` (optional with a ``default``)."""
        if key not in self.data:
            if default is _REQUIRED:
                raise SchemaError(f"{self._path(key)} is missing")
            return default
        value = self.data[key]
        if not any(_is(value, kind) for kind in kinds):
            wanted = " or ".join(_NAMES.get(kind, kind.__name__) for kind in kinds)
            raise SchemaError(f"{self._path(key)} must be {wanted}, not {_kind(value)}")
        return value

    def items(self, key: str, kind: type, *, default: Any = _REQUIRED) -> list[Any]:
        """The list field ``key``, whose every item must be of ``kind``."""
        values = self.get(key, list, default=default)
        for index, value in enumerate(values):
            if not _is(value, kind):
                wanted = _NAMES.get(kind, kind.__name__)
                raise SchemaError(
                    f"{self._path(key)}[{index}] must be {wanted}, not {_kind(value)}"
                )
        return list(values)

    def word(self, key: str, kind: type[Any], *, default: Any = _REQUIRED) -> Any:
        """The field ``key``, one of the enum ``kind``'s values (optional with a ``default``,
        a member of ``kind``)."""
        value = self.get(key, str, default=default.value if default is not _REQUIRED else default)
        try:
            return kind(value)
        except ValueError as exc:
            raise SchemaError(f"{self._path(key)}: {exc}") from None

    def objects(self, key: str, *, default: Any = _REQUIRED) -> list[Fields]:
        """The list field ``key`` of objects, each ready to be read."""
        values = self.get(key, list, default=default)
        return [Fields(value, f"{self._path(key)}[{i}]") for i, value in enumerate(values)]

    def object(self, key: str) -> Fields:
        """The object field ``key``, ready to be read."""
        return Fields(self.get(key, dict), self._path(key))
