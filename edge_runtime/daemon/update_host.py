"""The daemon as the updater's host (:class:`edge_runtime.updates.host.UpdateHost`): its config,
whether it is stopping, its pipelines by name, events, and further replies to a command."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from edge_runtime.config import Config
from edge_runtime.pipeline import Pipeline
from edge_runtime.reporting.commands import Command, CommandError
from edge_runtime.reporting.reporter import Reporter


class Daemon(Protocol):
    """What of the service this host reads (no import of it: the service imports this module)."""

    config: Config
    stop_event: threading.Event
    pipelines: list[Pipeline]
    reporter: Reporter | None


class ServiceUpdateHost:
    """Reads the daemon at each call: after a reload, the pipelines are the new ones."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    @property
    def config(self) -> Config:
        return self._daemon.config

    @property
    def stopping(self) -> bool:
        return self._daemon.stop_event.is_set()

    def pipeline(self, name: str) -> Pipeline:
        for p in self._daemon.pipelines:
            if p.name == name:
                return p
        raise CommandError(f"no pipeline {name!r}")

    def event(self, kind: str, message: str, fields: dict[str, Any]) -> None:
        reporter = self._daemon.reporter
        if reporter is not None:
            reporter.event(kind, message, fields)

    def reply(self, command: Command, body: dict[str, Any]) -> None:
        reporter = self._daemon.reporter
        if reporter is not None:
            reporter.dispatcher.reply(command, body)
