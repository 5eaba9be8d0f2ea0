"""What makes Cloud Logging's `entries:list` fast on a large store: each query's matching
entries, kept sorted between pages, and the insertIds already written.

A judge reads a rollout step's window of request logs, 1000 entries a page (the API's largest),
often while traffic keeps writing: without this, every page ran the filter over the whole
store and sorted the result again. Here a query's matches are computed once, and only the
entries written since are filtered on the next page. The store is append-only between resets
(`SandboxState.write_log`; a dry-run write puts back what was there), which `epoch` and the
count of entries scanned rely on. state.stores["logging"]: reset with the sandbox.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sandbox.emulator.logging_filter import parse_time

SortKey = tuple[dt.datetime, str, str]
Entry = dict[str, Any]
_QUERIES_KEPT = 32


def sort_key(entry: Entry) -> SortKey:
    """Logging's order: timestamp, then insertId (and the log, to make it total)."""
    return parse_time(entry["timestamp"]), entry.get("insertId", ""), entry["logName"]


@dataclass
class Matches:
    """One query's matching entries in ascending order, with their sort keys."""

    epoch: int
    scanned: int = 0  # how many of the store's entries were filtered
    keys: list[SortKey] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)

    def add(self, entry: Entry) -> None:
        key = sort_key(entry)
        if not self.keys or key >= self.keys[-1]:  # the usual case: written in time order
            self.keys.append(key)
            self.entries.append(entry)
            return
        at = bisect.bisect_right(self.keys, key)
        self.keys.insert(at, key)
        self.entries.insert(at, entry)

    def after(self, key: SortKey | None, descending: bool) -> Iterator[Entry]:
        """The entries past a page token's key, in the query's order."""
        if descending:
            end = len(self.keys) if key is None else bisect.bisect_left(self.keys, key)
            for i in range(end - 1, -1, -1):
                yield self.entries[i]
        else:
            start = 0 if key is None else bisect.bisect_right(self.keys, key)
            yield from self.entries[start:]


class LogIndex:
    def __init__(self) -> None:
        self.epoch = 0
        self.queries: OrderedDict[str, Matches] = OrderedDict()
        self.insert_ids: set[tuple[str, str, str]] = set()

    def reset(self) -> None:
        """The store was emptied (or put back after a dry run): forget what was derived."""
        self.epoch += 1
        self.queries.clear()
        self.insert_ids.clear()

    def matches(self, store: list[Entry], query: str, keep: Callable[[Entry], bool]) -> Matches:
        """The query's matches over the whole store, filtering only what is new since the last
        call. `keep` may raise (a filter that cannot apply to an entry): nothing is kept then."""
        found = self.queries.get(query)
        if found is None or found.epoch != self.epoch or found.scanned > len(store):
            found = Matches(epoch=self.epoch)
        fresh = store[found.scanned :]
        kept = [e for e in fresh if keep(e)]
        for entry in kept:
            found.add(entry)
        found.scanned += len(fresh)
        self.queries[query] = found
        self.queries.move_to_end(query)
        while len(self.queries) > _QUERIES_KEPT:
            self.queries.popitem(last=False)
        return found


def log_index(state: Any) -> LogIndex:
    index = state.stores.get("logging")
    if index is None:
        index = state.stores["logging"] = LogIndex()
    return index
