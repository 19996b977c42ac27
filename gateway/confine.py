"""Files inside a root folder whose contents someone else may shape (an agent's workspace, the memory tool's folder):
every path resolves inside the root, and only regular files are read or replaced.

The threat: a workspace cloned from somewhere, or written by a model through a tool, holding `MEMORY.md ->
/proc/self/environ` (the gateway's API key and token, sent upstream and shown by the inspector), `-> /etc/shadow`, a
FIFO that blocks a reader for ever, or a name with NUL or a thousand characters in it. So:

- a relative path is checked first (`check_relative`): no NUL or other control character, not absolute, no `..`,
  each name at most 255 bytes and the whole at most 1,024;
- it is resolved (`resolve_inside`): symlinks that stay inside the root are followed, one that leads out is refused;
  a root under /proc, /sys or /dev is refused outright;
- it is opened one component at a time from the root with O_NOFOLLOW (`read_inside`, `write_inside`), so a link
  swapped in between the check and the open is refused rather than followed (ELOOP), and the opened file must be
  the regular file that was checked (same device and inode).

Every refusal is an `UnsafePath` (an OSError, so code that already treats "cannot read" as a soft problem keeps
working) whose message says why, fit to show a user after the path ("MEMORY.md: refused: leads outside ...").
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets
import stat
from pathlib import Path, PurePosixPath

MAX_NAME_BYTES = 255  # NAME_MAX on Linux and macOS
MAX_PATH_BYTES = 1024
SPECIAL_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))
_SPECIAL_PREFIXES = tuple(f"{special}/" for special in SPECIAL_ROOTS)
# Where the kernel names what an open descriptor is (Linux): one open and one readlink resolve a whole path.
_FD_LINKS = Path("/proc/self/fd")
_O_PATH: int = getattr(os, "O_PATH", 0)  # Linux only
_PATH_FLAGS = _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_CONTROL = frozenset(chr(c) for c in (*range(0x20), 0x7F))
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A path that is refused: it leads outside its root, is not a regular file, or is not an acceptable name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@functools.lru_cache(maxsize=1024)
def check_relative(relative: str | PurePosixPath) -> PurePosixPath:
    """The path as clean components, or UnsafePath. An empty path (or ".") is the root itself.

    Remembered (a refusal is not: it raises): a workspace load checks the same few names every turn."""
    text = str(relative)
    if any(c in _CONTROL for c in text):
        raise UnsafePath("the name holds a control character (NUL, newline, ...)")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise UnsafePath("the name is not valid text") from None
    if size > MAX_PATH_BYTES:
        raise UnsafePath(f"the path is longer than {MAX_PATH_BYTES} bytes")
    path = PurePosixPath(text)
    if path.is_absolute():
        raise UnsafePath("the path must be relative to its folder")
    for part in path.parts:
        if part == "..":
            raise UnsafePath("the path must not contain '..'")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise UnsafePath(f"a name in the path is longer than {MAX_NAME_BYTES} bytes")
    return path


def real_root(root: Path) -> Path:
    """The root's real path; UnsafePath when it lies in a kernel filesystem, where every "file" is live state."""
    real = _kernel_realpath(root) or os.path.realpath(root)
    for special, prefix in zip(SPECIAL_ROOTS, _SPECIAL_PREFIXES, strict=True):
        if real == str(special) or real.startswith(prefix):
            raise UnsafePath(f"the folder resolves into {special}")
    return Path(real)


def _kernel_realpath(folder: Path) -> str | None:
    """The real path of an existing folder as the kernel resolved it on opening it, or None (not a folder, missing,
    or no /proc): os.path.realpath takes an lstat and a readlink per component in Python, three times the cost on a
    workspace load, which finds every turn's root afresh (issue 15)."""
    if not _O_PATH:
        return None
    try:
        fd = os.open(folder, _PATH_FLAGS)
    except OSError:
        return None
    try:
        real = os.readlink(_FD_LINKS / str(fd))
    except OSError:
        return None
    finally:
        os.close(fd)
    # A folder removed meanwhile reads "<path> (deleted)"; a name unreachable from this root reads otherwise.
    return real if real.startswith("/") and not real.endswith(" (deleted)") else None


class Confined:
    """One root folder, its real path found once: build one per unit of work (a workspace load, a tool call), so a
    root re-pointed in between is seen, and a load of ten files resolves the root once, not ten times."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = real_root(root)

    def resolve(self, relative: str | PurePosixPath) -> Path:
        """The real path of `root/relative` (which need not exist yet), guaranteed to lie inside the root.

        Symlinks are followed as far as they exist; one that leads out of the root is UnsafePath."""
        return self._resolve(check_relative(relative))[0]

    def stat(self, relative: str | PurePosixPath) -> os.stat_result | None:
        """The stat of the regular file `root/relative`; None when it does not exist; UnsafePath when it resolves out
        of the root or is anything but a regular file (a directory, FIFO, socket or device)."""
        target, st = self._resolve(check_relative(relative))
        return _regular(st if st is not None else _lstat(target))

    def is_dir(self, relative: str | PurePosixPath) -> bool:
        """Whether `root/relative` is a directory inside the root (False when missing; UnsafePath when it leads out)."""
        st = _lstat(self.resolve(relative))
        return st is not None and stat.S_ISDIR(st.st_mode)

    def listdir(self, relative: str | PurePosixPath) -> list[str]:
        """Names in the directory `root/relative`; FileNotFoundError when missing; UnsafePath when it leads out."""
        with os.scandir(self.resolve(relative)) as entries:
            return [entry.name for entry in entries]

    def read(self, relative: str | PurePosixPath, limit: int) -> tuple[bytes, bool]:
        """At most `limit` bytes of the regular file `root/relative`, and whether there was more.

        FileNotFoundError when it does not exist; UnsafePath as `stat`, or when it changed into something else
        between the check and the open."""
        target, st = self._resolve(check_relative(relative))
        checked = _regular_stat(target) if st is None else _regular(st)
        if checked is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", str(relative))
        # O_NONBLOCK: opening a FIFO swapped in after the check returns at once instead of waiting for a writer.
        fd = _open_beneath(self.base, PurePosixPath(target.relative_to(self.base)), os.O_RDONLY | os.O_NONBLOCK)
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino):
                raise UnsafePath("changed while it was being opened")
            chunks: list[bytes] = []
            left = limit + 1
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        return data[:limit], len(data) > limit

    def write(self, relative: str | PurePosixPath, data: bytes, *, mode: int = 0o600) -> Path:
        """Replace (or create) the regular file `root/relative` with `data`, atomically: readers see the old content
        or the new, never half. Missing parent folders are created (0700). Returns the real path written."""
        inner = check_relative(relative)
        if not inner.parts:
            raise UnsafePath("cannot write the folder itself")
        target, _ = self._resolve(inner)
        existing = _lstat(target)
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            raise UnsafePath(f"is {_kind(existing.st_mode)}, not a regular file")
        beneath = PurePosixPath(target.relative_to(self.base))
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        parent_fd = _open_beneath(self.base, beneath.parent, _DIR_FLAGS)
        temp = f".{beneath.name}.{secrets.token_hex(6)}.tmp"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temp, flags, mode, dir_fd=parent_fd)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, beneath.name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp, dir_fd=parent_fd)
                raise
        finally:
            os.close(parent_fd)
        return target

    def _resolve(self, inner: PurePosixPath) -> tuple[Path, os.stat_result | None]:
        """The real target, and its lstat when the walk already took it. Walking with lstat costs one call per
        component and finds no link in the common case; only a path with a link in it pays for realpath."""
        # Joined as text: pathlib's joins were most of a workspace load's cost (issue 15).
        base = str(self.base)
        current = base.rstrip("/")
        st: os.stat_result | None = None
        for part in inner.parts:
            current = f"{current}/{part}"
            st = _lstat(current)
            if st is None:
                return self.base.joinpath(*inner.parts), None  # no link on the way, and the rest does not exist
            if stat.S_ISLNK(st.st_mode):
                return self._followed(inner), None
        return (Path(current) if inner.parts else self.base), st

    def _followed(self, inner: PurePosixPath) -> Path:
        target = Path(os.path.realpath(self.base.joinpath(*inner.parts)))
        if target != self.base and not target.is_relative_to(self.base):
            raise UnsafePath(f"leads outside its folder (a symlink to {_shown(target)})")
        return target


def resolve_inside(root: Path, relative: str | PurePosixPath) -> Path:
    """`Confined(root).resolve(relative)`: the real path, guaranteed inside the root."""
    return Confined(root).resolve(relative)


def stat_inside(root: Path, relative: str | PurePosixPath) -> os.stat_result | None:
    return Confined(root).stat(relative)


def read_inside(root: Path, relative: str | PurePosixPath, limit: int) -> tuple[bytes, bool]:
    return Confined(root).read(relative, limit)


def write_inside(root: Path, relative: str | PurePosixPath, data: bytes, *, mode: int = 0o600) -> Path:
    return Confined(root).write(relative, data, mode=mode)


def _lstat(path: Path | str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _regular(st: os.stat_result | None) -> os.stat_result | None:
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"is {_kind(st.st_mode)}, not a regular file")
    return st


def _regular_stat(target: Path) -> os.stat_result | None:
    return _regular(_lstat(target))


def _open_beneath(base: Path, inner: PurePosixPath, flags: int) -> int:
    """Open `base/inner` one component at a time, following no symlink: one swapped in after the check is refused."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if not inner.parts:
        try:
            return os.open(".", flags | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)
    try:
        for name in inner.parts[:-1]:
            next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return os.open(inner.parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath("changed into a symlink while it was being opened") from None
        raise
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _shown(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 80 else "..." + text[-77:]
