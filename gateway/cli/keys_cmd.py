"""`agentspace keys set|list|remove`: the key vault. Keys are read from a prompt or stdin, never from argv."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from gateway.chat.key_vault import PROVIDERS, Vault, mask
from gateway.settings import Settings


def register(sub: Any) -> None:
    parser = sub.add_parser("keys", help="manage provider API keys in the vault")
    keys_sub = parser.add_subparsers(dest="keys_command", required=True)
    set_parser = keys_sub.add_parser("set", help="store a key (read from a prompt, or from stdin when piped)")
    set_parser.add_argument("provider", choices=PROVIDERS)
    set_parser.set_defaults(handler=set_key)
    list_parser = keys_sub.add_parser("list", help="list stored keys, masked")
    list_parser.set_defaults(handler=list_keys)
    remove_parser = keys_sub.add_parser("remove", help="delete a stored key")
    remove_parser.add_argument("provider", choices=PROVIDERS)
    remove_parser.set_defaults(handler=remove_key)


def _vault() -> Vault:
    return Vault(Settings.from_env().vault_path)


def set_key(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        key = getpass.getpass(f"{args.provider} API key: ")
    else:
        key = sys.stdin.readline()
    key = key.strip()
    if not key:
        print("agentspace: no key given", file=sys.stderr)
        return 2
    vault = _vault()
    vault.set(args.provider, key)
    print(f"stored {args.provider} key {mask(key)} in {vault.path}")
    return 0


def list_keys(args: argparse.Namespace) -> int:
    keys = _vault().read()
    if not keys:
        print("no keys stored")
    for provider, key in sorted(keys.items()):
        print(f"{provider}\t{mask(key)}")
    return 0


def remove_key(args: argparse.Namespace) -> int:
    if _vault().remove(args.provider):
        print(f"removed {args.provider} key")
        return 0
    print(f"no {args.provider} key stored", file=sys.stderr)
    return 1
