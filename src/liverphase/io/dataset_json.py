"""dataset.json checks that json.loads alone cannot make: a key given twice, a channel or phase
name given to two channels (either would read another channel's file as a phase)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from liverphase.errors import DatasetError


class JsonObject(dict):
    """A JSON object that remembers keys the file gave twice (json keeps the last silently)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.repeated: dict[str, list[Any]] = {}
        if len(self) < len(pairs):
            for key in self:
                values = [v for k, v in pairs if k == key]
                if len(values) > 1:
                    self.repeated[key] = values


def check_channel_names(channels: dict[str, Any], order: list[str], path: Path) -> None:
    """Each channel once, each phase name once: a repeated entry would silently read another
    channel's file as the phase (and be reported later as a mask off its grid)."""
    repeated = getattr(channels, "repeated", {})
    if repeated:
        key, values = next(iter(repeated.items()))
        raise DatasetError(
            f"'channel_names' lists channel {key!r} more than once ({values}): each channel "
            "needs exactly one entry",
            path,
        )
    by_index: dict[int, list[str]] = {}
    by_name: dict[str, list[int]] = {}
    for k in order:
        by_index.setdefault(int(k), []).append(k)
        by_name.setdefault(str(channels[k]), []).append(int(k))
    for index, keys in by_index.items():
        if len(keys) > 1:
            raise DatasetError(
                f"'channel_names' keys {keys} are the same channel {index}: each channel needs "
                "exactly one entry",
                path,
            )
    for name, indices in by_name.items():
        if len(indices) > 1:
            raise DatasetError(
                f"'channel_names' gives phase {name!r} to channels {indices}: each channel needs "
                "its own phase name",
                path,
            )
