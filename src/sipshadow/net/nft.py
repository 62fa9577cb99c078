"""A tiny ctypes wrapper over libnftables, so a takeover changes rules in-process instead of forking `nft`.

The rules apply to the network namespace of the calling process (libnftables talks netlink from it);
`apply(commands, netns)` forks `nft -f -` inside another namespace, for set-up from outside it.
"""

from __future__ import annotations

import ctypes
import subprocess
import threading
from types import TracebackType

LIBRARY = "libnftables.so.1"


class NftError(RuntimeError):
    """nft refused a command; the message is nft's own error text."""

    def __init__(self, commands: str, returncode: int, error: str) -> None:
        super().__init__(f"nft failed ({returncode}): {error.strip() or 'no error text'}\n--- commands ---\n{commands}")
        self.commands = commands
        self.returncode = returncode
        self.error = error


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def library() -> ctypes.CDLL:
    """Load libnftables once and declare the few functions used."""
    global _lib
    with _lib_lock:
        if _lib is None:
            lib = ctypes.CDLL(LIBRARY, use_errno=True)
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_free.restype = None
            for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
                getattr(lib, name).argtypes = [ctypes.c_void_p]
                getattr(lib, name).restype = ctypes.c_int
            for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
                getattr(lib, name).argtypes = [ctypes.c_void_p]
                getattr(lib, name).restype = ctypes.c_char_p
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
            _lib = lib
        return _lib


class Nft:
    """One libnftables context with buffered output and error text; create it early, use it fast."""

    def __init__(self) -> None:
        self._lib = library()
        ctx = self._lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not ctx:
            raise OSError(ctypes.get_errno(), "nft_ctx_new failed")
        self._ctx: int | None = ctx
        self._lock = threading.Lock()
        if self._lib.nft_ctx_buffer_output(ctx) != 0 or self._lib.nft_ctx_buffer_error(ctx) != 0:
            self.close()
            raise OSError("could not buffer libnftables output")

    def run(self, commands: str) -> str:
        """Run nft commands (the `nft -f` language) as one transaction; return nft's output."""
        with self._lock:
            if self._ctx is None:
                raise RuntimeError("the nft context is closed")
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
            output = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
            error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise NftError(commands, rc, error)
        return output

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None

    def __enter__(self) -> Nft:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


_shared: Nft | None = None
_shared_lock = threading.Lock()


def shared() -> Nft:
    """The process-wide context (created on first use; call early to keep that cost out of a takeover)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Nft()
        return _shared


def run(commands: str) -> str:
    """Run nft commands in this process's network namespace; raise NftError with nft's error text."""
    return shared().run(commands)


def drop_table(family: str, table: str) -> str:
    """Commands that remove a table whether or not it exists (nft 1.0.6 has no `destroy`)."""
    return f"add table {family} {table}\ndelete table {family} {table}\n"


def netdev_table(table: str, chain: str, hook: str, ifname: str, priority: int, rules: list[str]) -> str:
    """Commands that (re)create a one-chain `netdev` table on `ifname`'s `hook` (ingress, egress)."""
    body = "".join(f"    {rule}\n" for rule in rules)
    return (
        drop_table("netdev", table) + f"table netdev {table} {{\n  chain {chain} {{\n"
        f'    type filter hook {hook} device "{ifname}" priority {priority}; policy accept;\n'
        f"{body}  }}\n}}\n"
    )


def _in_netns(netns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def apply(commands: str, netns: str | None) -> None:
    """Run commands as one transaction: in this process (libnftables), or by `nft -f -` inside netns."""
    if netns is None:
        run(commands)
        return
    proc = subprocess.run(
        _in_netns(netns, ["nft", "-f", "-"]), input=commands, capture_output=True, text=True, check=False, timeout=20
    )
    if proc.returncode != 0:
        raise NftError(commands, proc.returncode, proc.stderr)


def list_tables(netns: str | None) -> str:
    """`nft list tables`, here or inside netns."""
    if netns is None:
        return run("list tables")
    argv = _in_netns(netns, ["nft", "list", "tables"])
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=20).stdout
