"""Tables and the rollout progress display, drawn with ``rich`` (the ``fleet`` extra).

Progress goes to stderr (a live bar per device on a terminal, one line per finished device
otherwise), tables to stdout.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from edge_runtime.fleet.common import STEPS, FleetError, short_sha
from edge_runtime.fleet.devices import Device, age_text, describe_models

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.table import Table

    from edge_runtime.fleet.rollout import RollbackOutcome, RolloutReport

RESULT_STYLE = {
    "updated": "green",
    "refused": "red",
    "rolled back": "red",
    "timeout": "red",
    "failed": "red",
    "cancelled": "yellow",
    "not attempted": "dim",
    "online": "green",
    "stopping": "yellow",
    "offline": "red",
    "unknown": "dim",
}


MARKS = {"updated": "[green]✓[/green]", "not attempted": "[dim]·[/dim]", "cancelled": "[yellow]![/yellow]"}


def _mark_column() -> Any:
    """A spinner while a device is updating, then a mark for its result."""
    from rich.progress import SpinnerColumn, Task
    from rich.text import Text

    class MarkColumn(SpinnerColumn):
        def render(self, task: Task) -> Any:
            mark = task.fields.get("mark")
            return Text.from_markup(mark) if mark else super().render(task)

    return MarkColumn()


def require_rich() -> None:
    try:
        import rich  # noqa: F401
    except ImportError as exc:
        raise FleetError(
            "the fleet tool draws its tables with rich: "
            "pip install 'edge-runtime[fleet]' (or pip install rich)"
        ) from exc


def console(*, stderr: bool = False) -> Console:
    require_rich()
    from rich.console import Console

    # device text is cleaned when it is read (common.device_json) and escaped as markup here;
    # no highlighting and no :emoji: codes either, so it prints exactly as the device sent it
    return Console(stderr=stderr, highlight=False, emoji=False)


def styled(text: str) -> str:
    from rich.markup import escape

    style = RESULT_STYLE.get(text)
    return f"[{style}]{escape(text)}[/{style}]" if style else escape(text)


def status_table(devices: Mapping[str, Device], now: float) -> Table:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{len(devices)} device(s)", title_justify="left")
    for column in ("device", "state", "version", "pipelines", "models", "fps", "last seen"):
        table.add_column(column, justify="right" if column == "fps" else "left")
    for name, device in devices.items():
        pipelines = device.pipelines
        fps = [device.fps(p) for p in pipelines]
        state = styled(device.state)
        if device.health_state and device.health_state != "ok" and device.online:
            state += f" ({escape(device.health_state)})"
        last = device.last_seen
        table.add_row(
            escape(name),
            state,
            escape(device.version),
            escape("\n".join(pipelines)),
            escape("\n".join(f"{p}: {describe_models(device, p) or '-'}" for p in pipelines)),
            "\n".join("-" if f is None else f"{f:.1f}" for f in fps),
            age_text(None if last is None else max(0.0, now - last)),
        )
    return table


def rollout_table(report: RolloutReport) -> Table:
    from rich.markup import escape
    from rich.table import Table

    a = report.artifact
    table = Table(
        title=f"{a.path.name} -> pipeline {a.pipeline} version {a.version} (sha256 {short_sha(a.sha256)})",
        title_justify="left",
        caption=report.summary(),
        caption_justify="left",
    )
    for column in ("device", "role", "result", "step", "error / reason", "new sha256", "time"):
        table.add_column(column, overflow="fold")
    for o in report.outcomes:
        table.add_row(
            escape(o.device),
            "canary" if o.canary else "",
            styled(o.result),
            escape(o.step or ""),
            escape(o.error or ""),
            short_sha(o.sha256) if o.ok else "",
            "" if o.seconds is None else f"{o.seconds:.1f}s",
        )
    return table


def rollback_table(pipeline: str, outcomes: Sequence[RollbackOutcome]) -> Table:
    from rich.markup import escape
    from rich.table import Table

    ok = sum(o.ok for o in outcomes)
    table = Table(
        title=f"rollback of pipeline {pipeline}",
        title_justify="left",
        caption=f"{ok} rolled back, {len(outcomes) - ok} failed",
        caption_justify="left",
    )
    for column in ("device", "result", "now running", "error"):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        running = " ".join(p for p in (f"v{o.version}" if o.version else "", short_sha(o.sha256)) if p)
        table.add_row(
            escape(o.device),
            styled("rolled back") if o.ok else styled("failed"),
            escape(running),
            escape(o.error or ""),
        )
    return table


class RolloutProgress:
    """A :data:`~edge_runtime.fleet.rollout.ProgressFn`: one task per device showing its current step."""

    def __init__(self, out: Console) -> None:
        self.console = out
        self.live = out.is_terminal
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskID] = {}
        self._canaries: set[str] = set()
        self.progress: Progress | None = None
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                _mark_column(),
                TextColumn("{task.description}"),
                TextColumn("[dim]{task.fields[role]}"),
                BarColumn(bar_width=24, complete_style="cyan", finished_style="green"),
                TextColumn("{task.fields[step]}"),
                TimeElapsedColumn(),
                console=out,
                transient=False,
            )

    def __enter__(self) -> RolloutProgress:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, device: str, step: str, details: Mapping[str, Any]) -> None:
        with self._lock:
            if step == "waiting":
                self._add(device, bool(details.get("canary")))
            elif step == "result":
                self._finish(device, details)
            else:
                self._step(device, step, details)

    def _add(self, device: str, canary: bool) -> None:
        from rich.markup import escape

        if canary:
            self._canaries.add(device)
        if self.progress is not None:
            self._tasks[device] = self.progress.add_task(
                escape(device),
                total=len(STEPS),
                start=False,
                role="canary" if canary else "",
                step="waiting",
                mark="",
            )

    def _step(self, device: str, step: str, details: Mapping[str, Any]) -> None:
        from rich.markup import escape

        task = self._tasks.get(device)
        if self.progress is None or task is None:
            return
        self.progress.start_task(task)
        if step == "transfer":
            text = f"transfer {details.get('done')}/{details.get('total')}"
            self.progress.update(task, step=text)
        elif step == "sent":
            self.progress.update(task, step="sent")
        else:
            ok = details.get("ok", True) is not False
            text = escape(step) if ok else f"[red]{escape(step)}[/red]"
            done = STEPS.index(step) + 1 if step in STEPS else None
            self.progress.update(task, step=text, completed=done)

    def _finish(self, device: str, details: Mapping[str, Any]) -> None:
        from rich.markup import escape

        result = str(details.get("result"))
        task = self._tasks.get(device)
        if self.progress is not None and task is not None:
            completed = len(STEPS) if result == "updated" else None
            mark = MARKS.get(result, "[red]✗[/red]")
            self.progress.start_task(task)  # a device never started gets an empty bar, not a pulse
            self.progress.update(task, step=styled(result), completed=completed, mark=mark)
            self.progress.stop_task(task)
            return
        role = " (canary)" if device in self._canaries else ""
        seconds = details.get("seconds")
        timing = f" in {seconds:.1f} s" if isinstance(seconds, float) else ""
        reason = f" at {details.get('step')}: {details.get('error')}" if details.get("error") else ""
        self.console.print(f"{escape(device)}{role}: {styled(result)}{timing}{escape(reason)}")
