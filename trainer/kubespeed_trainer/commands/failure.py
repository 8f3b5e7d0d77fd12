"""Why a pod's training failed, in one line that reaches the job: the failing rank's own words.

Each rank records its error line in the reply file torch's elastic agent gives it
(TORCHELASTIC_ERROR_FILE, one per rank, read back into the agent's
ProcessFailure). The launcher picks the rank whose exit decided the pod's exit
code and writes `rank <N>: <line>` to the pod's termination log
(KUBESPEED_TERMINATION_LOG, the container's terminationMessagePath). The kubelet
puts that file into the container's terminated state, where the operator reads
it into the job's condition and Event, with no credentials in the pod;
`kubespeed local` reads the same file for its summary.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from kubespeed import wiring
from kubespeed_trainer.elastic import LAUNCH_DIR_ENV

ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"
# In the launcher's own folder (elastic.LAUNCH_DIR_ENV): the first failure of a rank that no
# restart can help (a config or data error), kept across torch elastic's restart rounds.
PERMANENT_FILE = "permanent-failure.json"
# The kubelet reads at most this much of a termination log (MaxContainerTerminationMessageLength).
MAX_MESSAGE_BYTES = 4096


def record(message: str, code: int | None = None) -> None:
    """In a rank: say why it fails, for the launcher (a rank not started by one has nobody to tell).

    A permanent `code` is also kept in the launcher's folder: when another node's launcher
    gives up the rendezvous first, this launcher ends without its ranks' exit codes, and
    must still say the job cannot succeed rather than ask for another attempt.
    """
    written = {"message": message, "timestamp": int(time.time())}
    targets = [os.environ.get(ERROR_FILE_ENV)]
    launch_dir = os.environ.get(LAUNCH_DIR_ENV)
    if code in wiring.PERMANENT_EXIT_CODES and launch_dir:
        targets.append(os.path.join(launch_dir, PERMANENT_FILE))
        written.update(exitcode=code, rank=os.environ.get("RANK", "?"))
    for path in filter(None, targets):
        try:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(written, handle)
        except OSError:
            pass


def permanent(launch_dir: str) -> tuple[int, str] | None:
    """(exit code, `rank <N>: <why>`) of a rank of this launcher that failed in a way no restart
    can help, if one did."""
    try:
        with open(os.path.join(launch_dir, PERMANENT_FILE), encoding="utf-8") as handle:
            data = json.load(handle)
        return int(data["exitcode"]), f"rank {data['rank']}: {data['message']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recorded(failure: Any) -> str | None:
    """The line a failed rank recorded (by `record`, or by torch's own error handler), if any."""
    if not os.path.isfile(failure.error_file):
        # The agent then fills in a placeholder message.
        return None
    message = (failure.error_file_data or {}).get("message")
    if isinstance(message, dict):
        message = message.get("message")
    if not isinstance(message, str) or not message.strip():
        return None
    return message.strip()


def describe(rank: int, failure: Any) -> str:
    """`rank <N>: <why>`, from the rank's own line, else its exit."""
    line = recorded(failure)
    if line is None:
        code = failure.exitcode
        if code < 0:
            try:
                line = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                line = f"killed by signal {-code}"
        else:
            line = f"exited with code {code} without saying why (see the pod's log)"
    return f"rank {rank}: {line}"


def pick(failures: dict[int, Any], code: int) -> str:
    """The message of the first rank whose exit decided the pod's `code` (else of the first failed rank)."""
    ranks = sorted(failures)
    deciding = [rank for rank in ranks if failures[rank].exitcode == code] or ranks
    return describe(deciding[0], failures[deciding[0]])


def write_termination_message(message: str) -> None:
    """Where the kubelet (or `kubespeed local`) reads why the container ended; nowhere when not told."""
    path = os.environ.get(wiring.ENV_TERMINATION_LOG)
    if not path:
        return
    data = message.encode("utf-8")[-MAX_MESSAGE_BYTES:]
    try:
        with open(path, "wb") as handle:
            handle.write(data)
    except OSError as err:
        print(f"kubespeed launch: cannot write the termination log {path}: {err.strerror}", file=sys.stderr)
