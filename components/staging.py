"""Names of temporary files and folders that a later run can tell are abandoned.

Data preparation and the Pusher build their output under a hidden temporary
name and rename it at the end. The host and process id in the name let the
next run remove what a killed process left behind, and keep what a running
one is still writing.
"""

from __future__ import annotations

import os
import re
import secrets
import socket

HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"
# ".<label>.tmp-<host>-<pid>-<8 hex digits>"
TEMPORARY_NAME = re.compile(
    r"\.(?P<label>.+)\.tmp-(?P<host>[A-Za-z0-9._-]+)-(?P<pid>\d+)-[0-9a-f]{8}"
)


def temporary_name(label: str) -> str:
    """Return a new hidden temporary name for an output called `label`."""
    return f".{label}.tmp-{HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def abandoned_temporary(name: str) -> re.Match | None:
    """Return the name's match if it is a temporary of an ended process on this host.

    Temporaries of other hosts are never reported: their processes cannot be
    checked from here.
    """
    match = TEMPORARY_NAME.fullmatch(name)
    if match is None or match["host"] != HOST or process_is_running(int(match["pid"])):
        return None
    return match


def process_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # The process exists but belongs to another user.
        return True
    except OverflowError:  # Not a valid process id on this system.
        return False
    return True
