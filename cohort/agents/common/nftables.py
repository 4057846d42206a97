"""nftables from inside the agent: libnftables (the library the ``nft`` program wraps) in this process.

A rule set change then costs no fork and exec of ``nft``, which a loaded machine delays by tens of
milliseconds: on the distributor, that delay sits between a probe finding an amphora dead and its
removal from the bucket table. Without the library the ``nft`` program is run, as before.

``nft(*args, stdin=...)`` takes ``nft``'s own command line: ``"-f", "-"`` with a script on
``stdin``, or ``"-j"``/``"-t"`` flags and a command (``list table inet t``).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence

from cohort.agents.common.proc import CommandFailed, run

LOG = logging.getLogger(__name__)

LIBRARY = "libnftables.so.1"
# Output flags of libnftables.h (nft -j and -t).
_OUTPUT_JSON = 1 << 4
_OUTPUT_TERSE = 1 << 11
_FLAGS = {"-j": _OUTPUT_JSON, "-t": _OUTPUT_TERSE}


class _Library:
    """One libnftables context per agent, used by one caller at a time (it buffers its output)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise OSError("nft_ctx_new failed")
        if lib.nft_ctx_buffer_output(self._ctx) or lib.nft_ctx_buffer_error(self._ctx):
            raise OSError("libnftables cannot buffer its output")
        self._lock = threading.Lock()

    def run(self, flags: int, text: str) -> tuple[int, str, str]:
        with self._lock:
            self._lib.nft_ctx_output_set_flags(self._ctx, flags)
            code = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
            out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        return code, out.decode(errors="replace"), err.decode(errors="replace")


_library: _Library | None = None
_loaded = False
_load_lock = threading.Lock()


def _load() -> _Library | None:
    global _library, _loaded
    with _load_lock:
        if not _loaded:
            _loaded = True
            try:
                _library = _Library(ctypes.CDLL(LIBRARY))
            except OSError as exc:
                LOG.warning("libnftables not usable (%s): running the nft program instead", exc)
    return _library


def nft(*args: str, stdin: str | None = None) -> str:
    """Run what ``nft *args`` (fed ``stdin``) would; its output, or CommandFailed with nft's message."""
    flags, rest = 0, list(args)
    while rest and rest[0] in _FLAGS:
        flags |= _FLAGS[rest.pop(0)]
    script = _script(rest, stdin)
    library = _load() if script is not None else None
    if library is None or script is None:
        return run(["nft", *args], stdin=stdin)
    code, out, err = library.run(flags, script)
    if code != 0:
        raise CommandFailed(["nft", *args], code, err or out)
    return out


def _script(rest: Sequence[str], stdin: str | None) -> str | None:
    """The text libnftables runs for ``nft rest``; None for a command line it cannot take as text."""
    if list(rest) == ["-f", "-"]:
        return stdin if stdin is not None else ""
    if rest and not rest[0].startswith("-") and stdin is None:
        return " ".join(rest)
    return None
