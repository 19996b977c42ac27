"""The key vault: provider keys in `$AGENTSPACE_HOME/keys.json`, mode 0600, never printed whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

PROVIDERS = ("anthropic",)


def mask(key: str) -> str:
    if len(key) <= 12:
        return "*" * len(key)
    return f"{key[:7]}…{key[-4:]}"


class Vault:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, str]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ValueError(f"{self.path} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{self.path} must hold a JSON object")
        return {str(k): str(v) for k, v in raw.items() if isinstance(v, str)}

    def _write(self, keys: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        # Created 0600 from the start, so the key is never readable by others, not even for a moment.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(keys, handle, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def set(self, provider: str, key: str) -> None:
        keys = self.read()
        keys[provider] = key
        self._write(keys)

    def remove(self, provider: str) -> bool:
        keys = self.read()
        if provider not in keys:
            return False
        del keys[provider]
        self._write(keys)
        return True


class KeyProvider:
    """The Anthropic key in force: the environment's, else the vault's (re-read when the file changes)."""

    def __init__(self, env_key: str | None, vault: Vault) -> None:
        self._env_key = env_key
        self._vault = vault
        self._stamp: tuple[int, int] | None = None
        self._vault_key: str | None = None

    def anthropic_key(self) -> str | None:
        if self._env_key:
            return self._env_key
        try:
            stat = self._vault.path.stat()
        except FileNotFoundError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            try:
                self._vault_key = self._vault.read().get("anthropic")
            except ValueError:
                self._vault_key = None
            self._stamp = stamp
        return self._vault_key
