"""Open untrusted HDF5 files (``.h5ad``, 10x ``.h5``) safely: probe their structure in a child process first.

HDF5 keeps no checksums, and libhdf5 can *crash the process* (SIGSEGV) on a file whose metadata bytes are
damaged — a half-downloaded or bit-rotted file. No Python exception can catch that. So before our readers
open such a file, a short-lived child process walks every group, dataset and attribute (metadata only,
plus the first and last element of each dataset). If libhdf5 dies there, the caller gets a clear error
naming the file instead of a crash; if the probe passes, the same metadata reads are safe in-process.
Cost: one interpreter start with ``h5py`` only (~0.3 s), paid once per file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import sys
import h5py

def touch(name, obj):
    for key in obj.attrs.keys():
        obj.attrs[key]
    if isinstance(obj, h5py.Dataset):
        obj.shape, obj.dtype
        if obj.shape and obj.size:
            obj[(0,) * len(obj.shape)]
            obj[tuple(n - 1 for n in obj.shape)]
        elif obj.shape == ():
            obj[()]

with h5py.File(sys.argv[1], "r") as handle:
    touch("/", handle)
    handle.visititems(touch)
"""


class HDF5ProbeError(ValueError):
    """The file crashed libhdf5 (or hung) while its structure was read in a child process."""


def probe_hdf5(path: str | os.PathLike, timeout: float = 120.0) -> None:
    """Raise :class:`HDF5ProbeError` if reading ``path``'s HDF5 structure crashes or hangs libhdf5.

    Python-level errors in the child (a truncated file, a missing signature) are *not* raised here: the
    caller's own in-process open reports those with its usual, more specific message.
    """
    path = Path(path)
    try:
        result = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, timeout=timeout,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired as error:
        raise HDF5ProbeError(f"{path}: reading its HDF5 structure did not finish in {timeout:.0f} s: the file is "
                             "damaged (or on a hung file system). Re-download or re-write it.") from error
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name
        raise HDF5ProbeError(f"{path} is damaged: reading its HDF5 structure crashed libhdf5 ({name}). "
                             "Re-download the file or re-write it with anndata/h5py from a good copy.")
