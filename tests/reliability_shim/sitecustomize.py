"""Test-side instruments for reliability subprocesses (put this folder on PYTHONPATH; Python imports it at start-up).

Nothing here is library code; each instrument is off unless its environment variable is set:

- ``RELIABILITY_NET_LOG=PATH``: every socket connect and DNS lookup is appended to PATH as a JSON line,
  and refused unless it stays on this machine (loopback or a Unix socket), so a test can assert that a
  command reached for no network.
- ``RELIABILITY_SLOW_FORWARD=SECONDS``: every model forward that harvests activations sleeps first, so a
  run lasts long enough for a test to SIGKILL it right after a checkpoint it polls for appears.
- ``RELIABILITY_WRITE_DELAY=SECONDS`` with ``RELIABILITY_MARKS=DIR``: every ``os.replace`` (how every
  file and staged folder is put in place) sleeps first, and notes in DIR when the first file ("write")
  and the first folder ("swap") are renamed, so a test can interrupt a command at those moments.
- ``RELIABILITY_PEAK_LOG=PATH``: at exit, the process's peak resident memory (VmHWM of /proc/self/status,
  kB) is written to PATH.
"""

import os

if os.environ.get("RELIABILITY_NET_LOG"):
    import json
    import socket

    _log_path = os.environ["RELIABILITY_NET_LOG"]

    def _note(kind, target, allowed):
        with open(_log_path, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "kind": kind, "target": repr(target), "allowed": allowed}) + "\n")

    def _local(address) -> bool:
        if isinstance(address, (str, bytes)):  # a Unix socket path
            return True
        host = str(address[0]) if isinstance(address, tuple) and address else ""
        return host in ("localhost", "::1") or host.startswith("127.")

    _connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def connect(self, address):
        ok = _local(address)
        _note("connect", address, ok)
        if not ok:
            raise ConnectionRefusedError(f"network blocked by the reliability test: {address!r}")
        return _connect(self, address)

    def connect_ex(self, address):
        ok = _local(address)
        _note("connect_ex", address, ok)
        return _connect_ex(self, address) if ok else 111

    def getaddrinfo(host, *args, **kwargs):
        ok = host is None or _local((host,))
        _note("getaddrinfo", host, ok)
        if not ok:
            raise socket.gaierror(f"DNS blocked by the reliability test: {host!r}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo

if os.environ.get("RELIABILITY_SLOW_FORWARD"):
    import time

    from saecircuits.activations import store as _store

    _delay = float(os.environ["RELIABILITY_SLOW_FORWARD"])
    _activations = _store.ModelActivations.activations

    def activations(self, tokens):
        time.sleep(_delay)
        return _activations(self, tokens)

    _store.ModelActivations.activations = activations

if os.environ.get("RELIABILITY_PEAK_LOG"):
    import atexit

    def _peak():
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        with open(os.environ["RELIABILITY_PEAK_LOG"], "w") as f:
            f.write(str(kb))

    atexit.register(_peak)

if os.environ.get("RELIABILITY_WRITE_DELAY"):
    import time
    from pathlib import Path

    _write_delay = float(os.environ["RELIABILITY_WRITE_DELAY"])
    _marks = Path(os.environ["RELIABILITY_MARKS"])
    _replace = os.replace

    def replace(src, dst, *args, **kwargs):
        """Every atomic rename waits first; the first rename of a file notes "write" in the marks folder and
        the first of a folder (a staged output swapped in) notes "swap", so a test can signal the process then."""
        mark = _marks / ("swap" if os.path.isdir(src) else "write")
        if not mark.exists():
            mark.touch()
        time.sleep(_write_delay)
        return _replace(src, dst, *args, **kwargs)

    os.replace = replace
