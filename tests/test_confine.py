"""gateway.confine: a file read from (or written to) a folder someone else may shape stays inside it and is a regular
file, whatever the folder holds: symlinks out, /proc, FIFOs, odd names, a link swapped in after the check."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway import confine
from gateway.confine import UnsafePath, check_relative, read_inside, resolve_inside, stat_inside, write_inside


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "agent"
    folder.mkdir()
    (folder / "notes.md").write_text("inside")
    (tmp_path / "secret").write_text("TOKEN=hunter2")
    return folder


def test_a_regular_file_inside_is_read(root: Path) -> None:
    assert read_inside(root, "notes.md", 100) == (b"inside", False)
    assert read_inside(root, "notes.md", 3) == (b"ins", True)
    assert stat_inside(root, "missing.md") is None
    with pytest.raises(FileNotFoundError):
        read_inside(root, "missing.md", 10)


@pytest.mark.parametrize("target", ["../secret", "/etc/passwd", "/proc/self/environ"])
def test_a_symlink_out_is_refused(root: Path, target: str) -> None:
    (root / "MEMORY.md").symlink_to(target)
    with pytest.raises(UnsafePath, match="leads outside its folder"):
        read_inside(root, "MEMORY.md", 1 << 16)


def test_a_symlinked_folder_out_is_refused_and_a_link_inside_is_followed(root: Path) -> None:
    (root / "skills").symlink_to(root.parent)
    with pytest.raises(UnsafePath):
        read_inside(root, "skills/secret", 100)
    (root / "alias.md").symlink_to("notes.md")
    (root / "sub").mkdir()
    (root / "sub" / "up.md").symlink_to("../notes.md")
    assert read_inside(root, "alias.md", 100)[0] == b"inside"
    assert read_inside(root, "sub/up.md", 100)[0] == b"inside"


def test_a_fifo_is_refused_without_blocking(root: Path) -> None:
    os.mkfifo(root / "MEMORY.md")
    with pytest.raises(UnsafePath, match="FIFO"):
        read_inside(root, "MEMORY.md", 100)
    (root / "dir.md").mkdir()
    with pytest.raises(UnsafePath, match="directory"):
        stat_inside(root, "dir.md")


def test_a_root_in_proc_is_refused() -> None:
    with pytest.raises(UnsafePath, match="/proc"):
        read_inside(Path("/proc/self"), "environ", 100)


def test_a_root_reached_through_links_is_read_from_its_real_folder(tmp_path: Path) -> None:
    """The root is resolved by the kernel where it exists (Linux), by os.path.realpath where it does not: the same
    real folder either way, and files read through either name are the folder's."""
    real = tmp_path / "real" / "agents" / "coder"
    real.mkdir(parents=True)
    (real / "SYSTEM.md").write_text("be brief")
    (tmp_path / "home").symlink_to(tmp_path / "real")
    via = tmp_path / "home" / "agents" / "coder"
    assert confine.real_root(via) == real.resolve() == Path(os.path.realpath(via))
    assert read_inside(via, "SYSTEM.md", 100) == (b"be brief", False)
    assert confine.real_root(tmp_path / "home" / "agents" / "new") == (tmp_path / "real" / "agents" / "new").resolve()
    (tmp_path / "proc-link").symlink_to("/proc/self")
    with pytest.raises(UnsafePath, match="/proc"):
        confine.real_root(tmp_path / "proc-link" / "fd")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("a\x00b", "control character"),
        ("a\nb", "control character"),
        ("/etc/passwd", "relative"),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("x" * 256, "255 bytes"),
        ("é" * 128, "255 bytes"),
        ("a/" * 600, "1024 bytes"),
        ("\ud800", "not valid text"),
    ],
)
def test_bad_names_are_refused(root: Path, name: str, why: str) -> None:
    with pytest.raises(UnsafePath, match=why):
        check_relative(name)
    with pytest.raises(UnsafePath):
        resolve_inside(root, name)


def test_a_link_swapped_in_after_the_check_is_not_followed(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_check = confine._regular

    def check_then_swap(st: os.stat_result | None) -> os.stat_result | None:
        checked = real_check(st)
        (root / "notes.md").unlink()
        (root / "notes.md").symlink_to(root.parent / "secret")  # the race an attacker would try to win
        return checked

    monkeypatch.setattr(confine, "_regular", check_then_swap)
    with pytest.raises(UnsafePath, match="changed into a symlink"):
        read_inside(root, "notes.md", 100)
    (root / "notes.md").unlink()
    (root / "notes.md").write_text("inside")
    os.mkfifo(root / "pipe")
    monkeypatch.setattr(confine, "_regular", lambda st: os.lstat(root / "notes.md"))
    with pytest.raises(UnsafePath, match="changed while"):
        read_inside(root, "pipe", 100)  # opened without blocking, then refused: not the file that was checked


def test_write_inside_is_atomic_private_and_confined(root: Path) -> None:
    written = write_inside(root, "memories/today.md", b"first")
    assert written == (root / "memories" / "today.md").resolve()
    assert written.read_bytes() == b"first"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "memories").stat().st_mode) == 0o700
    write_inside(root, "memories/today.md", b"second")
    assert written.read_bytes() == b"second" and sorted(os.listdir(root / "memories")) == ["today.md"]
    (root / "out.md").symlink_to(root.parent / "secret")
    with pytest.raises(UnsafePath):
        write_inside(root, "out.md", b"overwrite")
    assert (root.parent / "secret").read_text() == "TOKEN=hunter2"
    (root / "escape").symlink_to(root.parent)
    with pytest.raises(UnsafePath):
        write_inside(root, "escape/new.md", b"x")
    assert not (root.parent / "new.md").exists()
    with pytest.raises(UnsafePath):
        write_inside(root, ".", b"x")


def test_an_agent_folder_linked_into_proc_reads_nothing(tmp_path: Path) -> None:
    from gateway.context.workspace import WorkspaceLoader

    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "evil").symlink_to("/proc/self")
    workspace = WorkspaceLoader(agents).load("evil")
    assert workspace.memory == "" and workspace.problems == (
        "agents/evil: refused: the folder resolves into /proc; using the defaults",
    )
