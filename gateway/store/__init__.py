"""All SQL lives here: the ORM models (`models`), engine and migration set-up (`db`), and the stores that run every
statement (chats, history, tool_calls, usage, calibration, snapshots, copy). Callers get plain results; no one else
opens a DB session.

It may import only the shared bottom (`gateway.errors`, `gateway.settings`) and SQLAlchemy; every other package may
import it.
"""

from gateway.clock import SYSTEM_CLOCK, Clock

from .base import Database
from .chats import ChatStore, TurnRows
from .compactions import Compacted, CompactionConflict, CompactionStore
from .history import HistoryItem
from .keys import KeyStore, KeyUsage
from .reservations import Held, HolderSpend, ReservationStore
from .sessions import HistoryPage, SessionPage, SessionStore
from .sqlite_threads import CancelledAfterCommit
from .tool_calls import StepSaved, ToolCallStore
from .transcripts import NewMessage, TailMoved, TranscriptStore
from .usage import UsageFilters, UsageStore, UsageTotals


class Store:
    def __init__(self, database: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self.database = database
        self.clock = clock  # every timestamp the stores write comes from it
        self.chats = ChatStore(database, clock)
        self.sessions = SessionStore(database)
        self.usage = UsageStore(database)
        self.keys = KeyStore(database, clock)
        self.tools = ToolCallStore(database, clock, self.chats.calibrations)
        self.transcripts = TranscriptStore(database, clock)
        self.compactions = CompactionStore(database, self.chats, clock)
        self.reservations = ReservationStore(database)


__all__ = [
    "CancelledAfterCommit",
    "ChatStore",
    "Compacted",
    "CompactionConflict",
    "CompactionStore",
    "Database",
    "Held",
    "HistoryItem",
    "HistoryPage",
    "HolderSpend",
    "KeyStore",
    "KeyUsage",
    "NewMessage",
    "ReservationStore",
    "SessionPage",
    "SessionStore",
    "StepSaved",
    "Store",
    "TailMoved",
    "ToolCallStore",
    "TranscriptStore",
    "TurnRows",
    "UsageFilters",
    "UsageStore",
    "UsageTotals",
]
