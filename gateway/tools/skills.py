"""The built-in skill readers: `read_skill` (a skill's SKILL.md body) and `read_skill_file` (a file the body refers
to), read-only and confined to the agent's `skills/` folder. The index (name and description) is already in the
system prompt; these load the rest on demand."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.confine import Confined, UnsafePath
from gateway.context.workspace import Skill, Workspace

from .base import ToolFailure, ToolOutcome

MAX_SKILL_FILE_BYTES = 1024 * 1024

READ_SKILL: dict[str, Any] = {
    "name": "read_skill",
    "description": (
        "Read the full instructions of one of your skills (its SKILL.md, without the front matter). Call it as soon "
        "as a skill listed under # Skills fits the task, before doing the task."
    ),
    "input_schema": {
        "type": "object",
        "properties": {"name": {"type": "string", "description": "The skill's name, as listed under # Skills."}},
        "required": ["name"],
    },
}
READ_SKILL_FILE: dict[str, Any] = {
    "name": "read_skill_file",
    "description": "Read a file in a skill's folder that its instructions refer to, such as a template or a script.",
    "input_schema": {
        "type": "object",
        "properties": {
            "skill": {"type": "string", "description": "The skill's name."},
            "path": {"type": "string", "description": "The file's path relative to the skill's folder."},
        },
        "required": ["skill", "path"],
    },
}


def strip_front_matter(text: str) -> str:
    lines = text.removeprefix("\ufeff").splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return text
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() in ("---", "..."):
            return "".join(lines[i + 1 :]).lstrip("\n")
    return text


def _argument(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ToolFailure(f"`{key}` must be a non-empty string")
    return value.strip()


class SkillReader:
    def __init__(self, workspace: Workspace) -> None:
        self._workspace = workspace

    def _skill(self, name: str) -> Skill:
        for skill in self._workspace.skills:
            if skill.name == name:
                return skill
        known = ", ".join(s.name for s in self._workspace.skills) or "none"
        raise ToolFailure(f"there is no skill named {name!r}; the skills are: {known}")

    def _read(self, relative: str) -> str:
        root = self._workspace.root
        if root is None:
            raise ToolFailure("this agent's folder cannot be read")
        try:
            data, cut = Confined(Path(root)).read(relative, MAX_SKILL_FILE_BYTES)
        except FileNotFoundError:
            raise ToolFailure(f"{relative} does not exist") from None
        except UnsafePath as exc:
            raise ToolFailure(f"{relative}: refused: {exc.reason.split(' (')[0]}") from None
        except OSError as exc:
            raise ToolFailure(f"{relative}: cannot read ({exc.strerror or exc})") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            if not cut:
                raise ToolFailure(f"{relative} is not a text file (not UTF-8)") from None
            text = data.decode("utf-8", errors="ignore")  # cut inside a character at the limit
        if cut:
            text += f"\n[... the file is longer than {MAX_SKILL_FILE_BYTES} bytes; the rest is not shown]"
        return text

    async def read_skill(self, args: dict[str, Any]) -> ToolOutcome:
        skill = self._skill(_argument(args, "name"))
        text = await asyncio.to_thread(self._read, f"skills/{skill.folder}/SKILL.md")
        return ToolOutcome(strip_front_matter(text).strip() or "(this skill's SKILL.md has no instructions)")

    async def read_skill_file(self, args: dict[str, Any]) -> ToolOutcome:
        skill = self._skill(_argument(args, "skill"))
        path = _argument(args, "path").removeprefix("./")
        if path.startswith("/"):
            raise ToolFailure("`path` must be relative to the skill's folder")
        return ToolOutcome(await asyncio.to_thread(self._read, f"skills/{skill.folder}/{path}"))
