"""All SQL lives here. Callers get plain results; no one else opens a DB session."""

from .base import Database
from .chats import ChatStore, HistoryPage, SessionPage, TurnRows
from .history import HistoryItem
from .usage import UsageFilters, UsageStore, UsageTotals


class Store:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.chats = ChatStore(database)
        self.usage = UsageStore(database)


__all__ = [
    "ChatStore",
    "Database",
    "HistoryItem",
    "HistoryPage",
    "SessionPage",
    "Store",
    "TurnRows",
    "UsageFilters",
    "UsageStore",
    "UsageTotals",
]
