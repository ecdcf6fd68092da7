"""``isolated_check``: an untrusted model is loaded and invoked in a child process first, so that a
runtime that crashes or hangs on it takes the child down, not the daemon.

The crash and timeout branches on real child processes. No file is known that crashes LiteRT 2.3
(1,200 randomly mutated copies of the digits model that pass the bounds-checked parser all load and
invoke cleanly; the parser refuses the rest), so the crash is delivered as the kernel would deliver
it: a SIGSEGV (a segfaulting runtime) or a SIGKILL (the OOM killer) to the child while it loads the
candidate. The candidate is a named pipe nobody writes to, as a file on storage that stopped
answering: the child blocks in its read, which is also what the timeout branch meets.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from devkit.paths import MODELS
from devkit.processes import wait_until
from edge_runtime.updates.checks import isolated_check
from edge_runtime.updates.protocol import CandidateLoadError


def children_reading(path: Path) -> list[int]:
    """Our child processes whose command line names ``path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and str(path).encode() in cmdline.split(b"\0"):
            found.append(int(entry.name))
    return found


class Checking:
    """``isolated_check(path, timeout_s)`` on a thread; :attr:`error` is what it raised."""

    def __init__(self, path: Path, timeout_s: float = 120.0) -> None:
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(path, timeout_s), daemon=True)
        self._thread.start()

    def _run(self, path: Path, timeout_s: float) -> None:
        try:
            isolated_check(path, timeout_s)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


@pytest.fixture
def stalled_model(tmp_path: Path) -> Path:
    """A candidate whose read never returns: a FIFO with no writer."""
    path = tmp_path / "candidate.tflite"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    ("sig", "cause"), [(signal.SIGSEGV, "a segfaulting runtime"), (signal.SIGKILL, "the OOM killer")]
)
def test_a_child_killed_by_a_signal_is_a_refusal_naming_the_signal(
    stalled_model: Path, sig: signal.Signals, cause: str
) -> None:
    check = Checking(stalled_model)
    assert wait_until(lambda: bool(children_reading(stalled_model)), 60), "the check started no child"
    (child,) = children_reading(stalled_model)
    assert not check.done.is_set(), "the check ended before the child could be killed"
    os.kill(child, sig)  # as the kernel does for `cause`
    assert check.done.wait(30), "the check did not notice its child died"
    assert isinstance(check.error, CandidateLoadError), (cause, check.error)
    assert (
        str(check.error) == f"candidate {stalled_model.name}: the runtime crashed on it (signal {int(sig)})"
    )
    assert not children_reading(stalled_model)


def test_a_child_that_hangs_is_stopped_at_the_timeout(stalled_model: Path) -> None:
    check = Checking(stalled_model, timeout_s=3.0)
    assert wait_until(lambda: bool(children_reading(stalled_model)), 60), "the check started no child"
    assert check.done.wait(60), "isolated_check did not return after its timeout"
    assert isinstance(check.error, CandidateLoadError), check.error
    assert str(check.error) == f"candidate {stalled_model.name}: loading it took over 3 s"
    # the hung child was killed and reaped, not left behind
    assert wait_until(lambda: not children_reading(stalled_model), 10), children_reading(stalled_model)


def test_a_good_model_passes_and_a_model_that_fails_to_load_is_refused_with_its_cause(tmp_path: Path) -> None:
    isolated_check(MODELS / "digits_int8.tflite")  # no exception: loaded and invoked in the child
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"TFL3" + bytes(200))
    with pytest.raises(CandidateLoadError, match=r"^candidate junk\.tflite: ") as refused:
        isolated_check(junk)
    assert "crashed" not in str(refused.value) and "took over" not in str(refused.value)
