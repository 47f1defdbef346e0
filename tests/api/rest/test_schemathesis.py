"""Schemathesis against the live OpenAPI document: a real server on 127.0.0.1, an admin token, every
operation fuzzed with schema-valid (positive) and schema-breaking (negative) requests. No response may
be a server error, and every response must match the document (status, content type, headers, body).

Two callers: the admin (every operation reaches its handler) and a project member (the authorisation
answers must be documented ones too). Examples per operation: $METAVMM_FUZZ_EXAMPLES (default 6) positive
as the admin, half as many negative and as many positive as the member, a quarter negative as the member,
so the whole run stays within a minute on a shared machine; the count is printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from metavmm.api.app import HTTP_LIMITS, create_app
from metavmm.foundation.config import parse_config
from tests.api import fuzzcount
from tests.world import SIM, World, seed

EXAMPLES = int(os.environ.get("METAVMM_FUZZ_EXAMPLES", "6"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


class LiveServer:
    """The broker in a thread of its own, with its own event loop, as a real client would see it."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.world: World | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="live-broker", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.app, access_log=None, **HTTP_LIMITS)  # as `metavmm serve`
        try:
            self.loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.world = self.loop.run_until_complete(seed(self.app))
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def __enter__(self) -> LiveServer:
        self.thread.start()
        self.ready.wait(60)
        if self.error:
            raise self.error
        return self

    def __exit__(self, *_: Any) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    app = create_app(parse_config(SIM), f"sqlite:///{tmp_path / 'live.db'}", sync=False)
    with LiveServer(app) as server:
        yield server


def _fuzz(operation: Any, mode: GenerationMode, examples: int, base_url: str, headers: dict[str, str],
          who: str) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        fuzzcount.add(f"schemathesis ({who}, {mode.value})")
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS)

    run()


def test_schemathesis_against_the_live_document(live: LiveServer) -> None:
    assert live.world is not None
    base = f"http://127.0.0.1:{live.port}/api/v1"
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    callers = {"admin": live.world.auth("admin"), "member": live.world.auth("alpha_member")}
    plan = [("admin", GenerationMode.POSITIVE, EXAMPLES), ("admin", GenerationMode.NEGATIVE, max(1, EXAMPLES // 2)),
            ("member", GenerationMode.POSITIVE, max(1, EXAMPLES // 2)),
            ("member", GenerationMode.NEGATIVE, max(1, EXAMPLES // 4))]
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for who, mode, examples in plan:
            try:
                _fuzz(operation, mode, examples, base, callers[who], who)
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE, operation.label  # nothing to break: no parameters
            except Exception as exc:
                failures.append(f"{operation.label} ({who}, {mode.value}): {str(exc)[:1200]}")
    assert operations >= 40
    assert not failures, "\n\n".join(failures)
