"""Agent workspaces: an agent's prompt, memory, skills, tools and settings, read from plain files.

The layout, formats and limits are documented for users in docs/AGENTS.md; keep the two in step.
A broken file never raises: it degrades to defaults and leaves a human-readable entry in `problems`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from gateway.billing.budget_config import Budget
from gateway.confine import Confined, UnsafePath
from gateway.errors import AgentNotFound, InvalidMessage
from gateway.protocol import AGENT_ID_PATTERN, AGENT_ID_RULE
from gateway.settings import DEFAULT_AGENT, DEFAULT_SYSTEM_PROMPT

from .context_config import ContextConfig
from .tool_config import ToolConfig
from .workspace_files import (
    MAX_AGENT_TOML_BYTES,
    MAX_MEMORY_BYTES,
    MAX_SKILL_DESCRIPTION_CHARS,
    MAX_SKILL_FILE_BYTES,
    MAX_SKILLS,
    MAX_SYSTEM_BYTES,
    MAX_TOOLS_BYTES,
    AgentConfig,
    ToolsFile,
    parse_agent_toml,
    parse_skill,
    parse_text,
    parse_tools,
)

log = logging.getLogger(__name__)

# On filesystems with coarse timestamps a same-size rewrite in the same tick as our read keeps the
# same (mtime, size); files changed this recently are re-read every time (git's "racily clean" rule).
_RACY_WINDOW_NS = 2_000_000_000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Skill:
    name: str
    description: str
    folder: str = field(default="", compare=False)  # under skills/, where read_skill finds its SKILL.md


@dataclass(frozen=True, slots=True)
class Workspace:
    agent_id: str
    system_prompt: str
    system_truncated: bool
    memory: str  # "" if none
    memory_truncated: bool
    skills: tuple[Skill, ...]
    skills_truncated: bool
    tools: tuple[dict[str, Any], ...]
    tools_truncated: bool
    model: str | None  # from agent.toml
    cache_mode: str  # "off" | "5m" | "1h"
    max_tokens: int | None
    problems: tuple[str, ...]
    budget: Budget | None = None  # agent.toml [budget]; enforced by gateway/billing/budgets.py
    tool_config: ToolConfig = field(default_factory=ToolConfig)  # agent.toml [tools] and [mcp]; used by gateway/tools
    root: Path | None = None  # the agent's folder (the default agent's may not exist); None when it was refused
    context: ContextConfig = field(default_factory=ContextConfig)  # agent.toml [context]: window, compaction, editing


def validate_agent_id(agent_id: str) -> str:
    """Return the id unchanged, or raise InvalidMessage: ids come from clients and become folder names."""
    # The protocol checks ids arriving in frames already; this guards every other caller (CLI, tests, tools).
    if not isinstance(agent_id, str) or not AGENT_ID_PATTERN.fullmatch(agent_id):
        raise InvalidMessage(
            f"agentId {AGENT_ID_RULE}", field="agentId", agentId=agent_id if isinstance(agent_id, str) else None
        )
    return agent_id


class _FileCache(Generic[T]):
    """Parsed files keyed by path, trusted while (mtime_ns, size, inode) is unchanged. Every file is read through
    `gateway.confine`: it must resolve inside its agent's folder and be a regular file."""

    def __init__(self, parse: Callable[[bytes, bool], T], limit: int) -> None:
        self._parse = parse
        self._limit = limit
        self._entries: dict[str, tuple[tuple[int, int, int], T]] = {}
        self.reads = 0

    def get(self, folder: Confined, relative: str) -> T | None:
        """None if the file does not exist; OSError (UnsafePath among them) if it exists but must not be read."""
        path = f"{folder.base}/{relative}"
        st = folder.stat(relative)
        if st is None:
            self._entries.pop(path, None)
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._entries.get(path)
        if cached is not None and cached[0] == key and time.time_ns() - st.st_mtime_ns > _RACY_WINDOW_NS:
            return cached[1]
        # Stat before reading: if the file changes during the read, the next stat differs and we read again.
        data, cut = folder.read(relative, self._limit)
        self.reads += 1
        value = self._parse(data, cut)
        self._entries[path] = (key, value)
        return value


class WorkspaceLoader:
    """Loads workspaces on every call, re-parsing only files whose stat changed, so edits apply without restart.

    load() does small blocking reads (a few stats when nothing changed); callers on an event loop that expect
    large or slow workspaces can run it in a thread.
    """

    def __init__(self, agents_dir: Path) -> None:
        self.agents_dir = Path(agents_dir)
        self._system = _FileCache(parse_text, MAX_SYSTEM_BYTES)
        self._memory = _FileCache(parse_text, MAX_MEMORY_BYTES)
        self._skills = _FileCache(parse_skill, MAX_SKILL_FILE_BYTES)
        self._tools = _FileCache(parse_tools, MAX_TOOLS_BYTES)
        self._config = _FileCache(parse_agent_toml, MAX_AGENT_TOML_BYTES)

    @property
    def file_reads(self) -> int:
        """How many files were actually read (not served from cache); for tests and metrics."""
        caches = (self._system, self._memory, self._skills, self._tools, self._config)
        return sum(c.reads for c in caches)

    def exists(self, agent_id: str) -> bool:
        """Whether load() would find the agent; InvalidMessage for an invalid id."""
        agent_id = validate_agent_id(agent_id)
        return agent_id == DEFAULT_AGENT or (self.agents_dir / agent_id).is_dir()

    def list_agents(self) -> list[str]:
        """Folder names that are valid agent ids, plus "default", sorted."""
        names = {DEFAULT_AGENT}
        try:
            with os.scandir(self.agents_dir) as entries:
                for entry in entries:
                    if AGENT_ID_PATTERN.fullmatch(entry.name) and entry.is_dir():
                        names.add(entry.name)
        except OSError:
            pass  # no agents folder yet: only the built-in default exists
        return sorted(names)

    def load(self, agent_id: str) -> Workspace:
        if not self.exists(agent_id):
            raise AgentNotFound(f"agent {agent_id!r} not found", agentId=agent_id)
        problems: list[str] = []
        root: Confined | None = None
        try:
            root = Confined(self.agents_dir / agent_id)
        except UnsafePath as exc:  # the folder itself resolves into /proc, /sys or /dev: read nothing from it
            problems.append(f"agents/{agent_id}: refused: {exc}; using the defaults")
        system = self._get(self._system, root, "SYSTEM.md", problems)
        memory = self._get(self._memory, root, "MEMORY.md", problems)
        tools = self._get(self._tools, root, "tools.json", problems) or ToolsFile()
        config = self._get(self._config, root, "agent.toml", problems) or AgentConfig()
        skills, skills_truncated = self._load_skills(root, problems)
        for name, text, limit in (("SYSTEM.md", system, MAX_SYSTEM_BYTES), ("MEMORY.md", memory, MAX_MEMORY_BYTES)):
            if text is not None and text.truncated:
                problems.append(f"{name}: longer than {limit} bytes; truncated")
        problems.extend(tools.problems)
        problems.extend(config.problems)
        return Workspace(
            agent_id=agent_id,
            # An empty SYSTEM.md is more likely an accident than a wish, and Anthropic rejects empty text blocks.
            system_prompt=system.text if system is not None and system.text else DEFAULT_SYSTEM_PROMPT,
            system_truncated=system is not None and system.truncated,
            memory=memory.text if memory is not None else "",
            memory_truncated=memory is not None and memory.truncated,
            skills=skills,
            skills_truncated=skills_truncated,
            # Shallow copies: callers commonly add cache_control to a tool, which must not leak into the cache.
            tools=tuple(dict(tool) for tool in tools.tools),
            tools_truncated=tools.truncated,
            model=config.model,
            cache_mode=config.cache_mode,
            max_tokens=config.max_tokens,
            problems=tuple(problems),
            budget=config.budget,
            tool_config=config.tools,
            root=root.root if root is not None else None,
            context=config.context,
        )

    @staticmethod
    def _get(cache: _FileCache[T], root: Confined | None, relative: str, problems: list[str]) -> T | None:
        if root is None:
            return None
        try:
            return cache.get(root, relative)
        except UnsafePath as exc:
            problems.append(f"{relative}: refused: {exc}; ignored")
        except OSError as exc:
            problems.append(f"{relative}: cannot read ({exc.strerror or exc}); ignored")
        except Exception as exc:
            # Each parser turns bad input into problems; this is the net under a parser bug, so that one agent's
            # odd file never fails a send or a report.
            log.exception("parsing %s of agent %s failed", relative, root.root.name)
            problems.append(f"{relative}: could not be parsed ({type(exc).__name__}); ignored")
        return None

    def _load_skills(self, root: Confined | None, problems: list[str]) -> tuple[tuple[Skill, ...], bool]:
        if root is None:
            return (), False
        try:
            names = root.listdir("skills")
        except (FileNotFoundError, NotADirectoryError):
            return (), False
        except OSError as exc:
            problems.append(f"skills: cannot list ({exc}); ignored")
            return (), False
        skills: dict[str, Skill] = {}
        truncated = False
        for folder in sorted(n for n in names if not n.startswith(".")):
            label = f"skills/{folder}/SKILL.md"
            parsed = self._get(self._skills, root, label, problems)
            if parsed is None:
                continue  # a folder without SKILL.md is not a skill (it may hold the skill's scratch files)
            if len(skills) == MAX_SKILLS:
                # Folders are taken in name order, so which skills survive is stable across reloads.
                truncated = True
                problems.append(f"skills: more than {MAX_SKILLS}; only the first {MAX_SKILLS} folders by name are used")
                break
            name = parsed.name or folder
            if name in skills:
                problems.append(f"{label}: duplicate skill name {name!r}; ignored")
                continue
            if parsed.truncated:
                truncated = True
                problems.append(f"{label}: description longer than {MAX_SKILL_DESCRIPTION_CHARS} characters; truncated")
            skills[name] = Skill(name, parsed.description, folder)
        return tuple(sorted(skills.values(), key=lambda s: s.name)), truncated
