"""Make permission bits bite when the tests run as root (as they do here and in CI).

Root reads a ``chmod 000`` folder because it holds CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH. Dropping those
two from the calling thread's *effective* set (they stay permitted, so they can be raised again) makes the
kernel check the mode bits for that thread, exactly as for a non-root user. Nothing is mocked: the real
``os.walk``/``open`` calls fail with the real EACCES. For a non-root user this is a no-op.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_DAC = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _capabilities() -> tuple[ctypes.CDLL, _Header, ctypes.Array]:
    libc = ctypes.CDLL(None, use_errno=True)
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    return libc, header, data


@contextmanager
def permissions_enforced() -> Iterator[None]:
    """Within the block, this thread obeys file mode bits even as root."""
    if os.geteuid() != 0:
        yield
        return
    libc, header, data = _capabilities()
    saved = data[0].effective
    data[0].effective = saved & ~_DAC
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    try:
        yield
    finally:
        data[0].effective = saved
        libc.capset(ctypes.byref(header), data)
