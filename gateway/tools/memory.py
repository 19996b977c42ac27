"""Anthropic's memory tool (`memory_20250818`), run by the gateway: `/memories` is the agent's `memories/` folder.

The model names paths; nothing it names may reach outside that folder. Every path must start with `/memories`, is
checked as a relative path (no `..`, no NUL or control characters, no hidden names, bounded lengths:
`gateway.confine.check_relative`) and resolved inside the folder (a symlink leading out is refused), and files are
read and replaced through `gateway.confine`, which opens them without following a link swapped in after the check.
The folder itself must be a plain folder, not a link. Files, the folder's total size and its entry count are capped,
and `view` pages long files. The wording of results follows the SDK's own implementation (`anthropic.tools.memory`),
which is what the model is used to. MEMORY.md stays the hand-kept memory that is always in the system prompt.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from gateway.confine import Confined, UnsafePath, check_relative

from .base import ToolFailure, ToolOutcome

MEMORY_TOOL: dict[str, Any] = {"type": "memory_20250818", "name": "memory"}
MAX_FILE_BYTES = 100 * 1024
MAX_TOTAL_BYTES = 10 * 1024 * 1024
MAX_ENTRIES = 1000
VIEW_LINES = 400  # a longer file is shown a page at a time; the result says how to see the next
LISTING_ENTRIES = 200


def _text(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise ToolFailure(f"`{key}` must be a string")
    return value


class MemoryTool:
    def __init__(self, agent_root: Path, lock: asyncio.Lock) -> None:
        self._folder = agent_root / "memories"
        self._lock = lock  # one agent's memory is changed by one call at a time, across sessions

    async def run(self, args: dict[str, Any]) -> ToolOutcome:
        async with self._lock:
            return ToolOutcome(await asyncio.to_thread(self._execute, args))

    def _execute(self, args: dict[str, Any]) -> str:
        command = args.get("command")
        handler = {
            "view": self._view,
            "create": self._create,
            "str_replace": self._str_replace,
            "insert": self._insert,
            "delete": self._delete,
            "rename": self._rename,
        }.get(command if isinstance(command, str) else "")
        if handler is None:
            raise ToolFailure(f"Unknown command: {command!r}; use view, create, str_replace, insert, delete or rename")
        try:
            return handler(args)
        except UnsafePath as exc:
            # Without the link's target: where the gateway's files live is none of the model's business.
            raise ToolFailure(f"Refused: {exc.reason.split(' (')[0]}") from None

    # -- paths

    def _root(self) -> Confined:
        try:
            st = os.lstat(self._folder)
        except FileNotFoundError:
            self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(self._folder)
        if not stat.S_ISDIR(st.st_mode):
            raise ToolFailure("the /memories folder is not a plain folder (a link or a file); refused")
        return Confined(self._folder)

    @staticmethod
    def _relative(path: str) -> PurePosixPath:
        if path != "/memories" and not path.startswith("/memories/"):
            raise ToolFailure(f"Path must start with /memories, got: {path[:200]}")
        inner = check_relative(path[len("/memories") :].strip("/"))
        if any(part.startswith(".") for part in inner.parts):
            raise ToolFailure(f"{path}: names starting with '.' are not allowed")
        return inner

    def _path(self, args: dict[str, Any], key: str = "path") -> tuple[Confined, PurePosixPath, Path, str]:
        shown = _text(args, key)
        inner = self._relative(shown)
        root = self._root()
        return root, inner, root.resolve(inner), shown

    # -- commands

    def _view(self, args: dict[str, Any]) -> str:
        root, inner, target, shown = self._path(args)
        try:
            st = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            raise ToolFailure(f"The path {shown} does not exist. Please provide a valid path.") from None
        if stat.S_ISDIR(st.st_mode):
            return self._listing(target, shown)
        data, cut = root.read(inner, MAX_FILE_BYTES)
        lines = data.decode("utf-8", errors="replace").split("\n")
        first, last = 1, len(lines)
        view_range = args.get("view_range")
        if isinstance(view_range, list) and len(view_range) == 2 and all(isinstance(n, int) for n in view_range):
            first = max(1, view_range[0])
            last = len(lines) if view_range[1] == -1 else min(len(lines), view_range[1])
        shown_last = min(last, first + VIEW_LINES - 1)
        numbered = [f"{n:6d}\t{lines[n - 1]}" for n in range(first, shown_last + 1)]
        out = f"Here's the content of {shown} with line numbers:\n" + "\n".join(numbered)
        if shown_last < last:
            out += (
                f"\n[Showing lines {first}-{shown_last} of {len(lines)}. To see more, view again with "
                f"view_range [{shown_last + 1}, {min(last, shown_last + VIEW_LINES)}].]"
            )
        if cut:
            out += f"\n[The file is larger than {MAX_FILE_BYTES} bytes; only its beginning is shown.]"
        return out

    def _listing(self, folder: Path, shown: str) -> str:
        entries: list[str] = []

        def walk(directory: Path, prefix: str, depth: int) -> None:
            try:
                with os.scandir(directory) as scan:
                    children = sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)
            except OSError:
                return
            for entry in children:
                if len(entries) >= LISTING_ENTRIES:
                    return
                st = entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    entries.append(f"{_size(st.st_size)}\t{shown}/{prefix}{entry.name}/")
                    if depth < 2:
                        walk(Path(entry.path), f"{prefix}{entry.name}/", depth + 1)
                elif entry.is_file(follow_symlinks=False):
                    entries.append(f"{_size(st.st_size)}\t{shown}/{prefix}{entry.name}")

        shown = shown.rstrip("/")
        walk(folder, "", 1)
        header = f"Here're the files and directories up to 2 levels deep in {shown}, excluding hidden items:"
        more = f"\n[Only the first {LISTING_ENTRIES} entries are shown.]" if len(entries) >= LISTING_ENTRIES else ""
        return "\n".join([header, f"{_size(os.lstat(folder).st_size)}\t{shown}", *entries]) + more

    def _create(self, args: dict[str, Any]) -> str:
        root, inner, target, shown = self._path(args)
        data = _text(args, "file_text").encode("utf-8", errors="replace")
        if not inner.parts:
            raise ToolFailure("Cannot create the /memories directory itself")
        if os.path.lexists(target):
            raise ToolFailure(f"File {shown} already exists")
        self._check_room(len(data), new_entries=1 + len(inner.parts) - 1)
        root.write(inner, data)
        return f"File created successfully at: {shown}"

    def _existing_file(self, args: dict[str, Any]) -> tuple[Confined, PurePosixPath, str, str]:
        root, inner, target, shown = self._path(args)
        try:
            data, cut = root.read(inner, MAX_FILE_BYTES)
        except (FileNotFoundError, NotADirectoryError):
            raise ToolFailure(f"The path {shown} does not exist. Please provide a valid path.") from None
        except UnsafePath:
            if os.path.isdir(target):
                raise ToolFailure(f"The path {shown} is not a file.") from None
            raise
        if cut:
            raise ToolFailure(f"The file {shown} is larger than {MAX_FILE_BYTES} bytes and cannot be edited")
        return root, inner, shown, data.decode("utf-8", errors="replace")

    def _str_replace(self, args: dict[str, Any]) -> str:
        root, inner, shown, content = self._existing_file(args)
        old, new = _text(args, "old_str"), _text(args, "new_str")
        count = content.count(old) if old else 0
        if count == 0:
            raise ToolFailure(f"No replacement was performed, old_str `{old}` did not appear verbatim in {shown}.")
        if count > 1:
            found = [content[:i].count("\n") + 1 for i in _positions(content, old)]
            raise ToolFailure(
                f"No replacement was performed. Multiple occurrences of old_str `{old}` in lines: "
                f"{', '.join(map(str, found))}. Please ensure it is unique"
            )
        updated = content.replace(old, new)
        self._write(root, inner, updated, len(content.encode()))
        changed = content[: content.find(old)].count("\n")
        lines = updated.split("\n")
        snippet = [f"{n + 1:6d}\t{lines[n]}" for n in range(max(0, changed - 2), min(len(lines), changed + 3))]
        return "The memory file has been edited. Here is the snippet showing the change (with line numbers):\n" + (
            "\n".join(snippet)
        )

    def _insert(self, args: dict[str, Any]) -> str:
        root, inner, shown, content = self._existing_file(args)
        text, line = _text(args, "insert_text"), args.get("insert_line")
        lines = content.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if not isinstance(line, int) or isinstance(line, bool) or not 0 <= line <= len(lines):
            raise ToolFailure(
                f"Invalid `insert_line` parameter: {line}. It should be within the range [0, {len(lines)}]."
            )
        lines.insert(line, text.rstrip("\n"))
        self._write(root, inner, "\n".join(lines) + "\n", len(content.encode()))
        return f"The file {shown} has been edited."

    def _delete(self, args: dict[str, Any]) -> str:
        _, inner, target, shown = self._path(args)
        if not inner.parts:
            raise ToolFailure("Cannot delete the /memories directory itself")
        try:
            st = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            raise ToolFailure(f"The path {shown} does not exist") from None
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(target)  # removes links inside as links, never what they point to
        else:
            os.unlink(target)
        return f"Successfully deleted {shown}"

    def _rename(self, args: dict[str, Any]) -> str:
        _, old_inner, old, old_shown = self._path(args, "old_path")
        _, new_inner, new, new_shown = self._path(args, "new_path")
        if not old_inner.parts or not new_inner.parts:
            raise ToolFailure("Cannot rename the /memories directory itself")
        if not os.path.lexists(old):
            raise ToolFailure(f"The path {old_shown} does not exist")
        if os.path.lexists(new):
            raise ToolFailure(f"The destination {new_shown} already exists")
        self._check_room(0, new_entries=len(new_inner.parts) - 1)
        new.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.rename(old, new)
        except OSError as exc:
            raise ToolFailure(f"Cannot rename {old_shown} to {new_shown}: {exc.strerror or exc}") from None
        return f"Successfully renamed {old_shown} to {new_shown}"

    # -- limits

    def _write(self, root: Confined, inner: PurePosixPath, text: str, old_bytes: int) -> None:
        data = text.encode("utf-8")
        self._check_room(len(data) - old_bytes, new_entries=0, file_bytes=len(data))
        root.write(inner, data)

    def _check_room(self, added_bytes: int, *, new_entries: int, file_bytes: int | None = None) -> None:
        if (file_bytes if file_bytes is not None else added_bytes) > MAX_FILE_BYTES:
            raise ToolFailure(f"A memory file may hold at most {MAX_FILE_BYTES} bytes; keep it shorter or split it")
        total, entries = _usage(self._folder)
        if total + added_bytes > MAX_TOTAL_BYTES:
            raise ToolFailure(f"/memories is full ({total} of {MAX_TOTAL_BYTES} bytes); delete or shorten something")
        if entries + new_entries > MAX_ENTRIES:
            raise ToolFailure(f"/memories holds {entries} files and folders, the most it may; delete some first")


def _usage(folder: Path) -> tuple[int, int]:
    """Bytes of regular files and number of entries under `folder`, links not followed."""
    total = entries = 0
    stack = [folder]
    while stack and entries <= MAX_ENTRIES * 2:
        try:
            with os.scandir(stack.pop()) as scan:
                for entry in scan:
                    entries += 1
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total, entries


def _positions(text: str, needle: str) -> list[int]:
    found, start = [], 0
    while (i := text.find(needle, start)) != -1:
        found.append(i)
        start = i + 1
    return found


def _size(n: int) -> str:
    if n < 1024:
        return f"{n}B"
    return f"{n / 1024:.1f}K" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f}M"
