"""The equity report in a real browser: headless Chromium, no console errors, no network.

Chromium is driven over the DevTools protocol on ``--remote-debugging-pipe`` (file descriptors 3
and 4, NUL-separated JSON), so the test needs nothing beyond the standard library. Every request
the page makes is recorded (``Network.requestWillBeSent``); only the report's own ``file://`` URL
and ``data:`` URLs are allowed. A full-page screenshot is saved for a human to look at.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

try:
    from tests.test_report_support import build_fixture_report
except ImportError:  # tests/ on sys.path (pytest's rootdir-less import mode)
    from test_report_support import build_fixture_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BASH = shutil.which("bash") or "/bin/bash"  # dash cannot redirect fds above 9
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it)",
    ),
]


def _park_high(fd: int) -> int:
    """Move ``fd`` to a number >= 10 (close-on-exec), closing the original."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class DevToolsPipe:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``."""

    def __init__(self, user_data_dir: Path) -> None:
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # Park the child's ends above fd 9 so the redirections onto 3 and 4 cannot clobber them.
        to_browser_read = _park_high(to_browser_read)
        from_browser_write = _park_high(from_browser_write)

        # The shell puts the pipe ends on fds 3 (commands in) and 4 (replies out), then execs
        # chromium: no preexec_fn (unsafe with threads) and nothing else is inherited.
        script = (
            f"exec 3<&{to_browser_read} 4>&{from_browser_write} "
            f'{to_browser_read}<&- {from_browser_write}>&-; exec "$@"'
        )
        self.process = subprocess.Popen(
            [
                BASH,
                "-c",
                script,
                "chromium",
                str(CHROMIUM),
                *FLAGS,
                f"--user-data-dir={user_data_dir}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(to_browser_read, from_browser_write),
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(
        self,
        method: str,
        params: dict | None = None,
        *,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Send a command and wait for its reply; events seen meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(f"no reply to {method} within {timeout} s")

    def wait_for(self, method: str, *, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until an event named ``method`` has arrived (returns it)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} event within {timeout} s")
            self.events.append(self._read(deadline))

    def _read(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("chromium sent nothing in time")
            ready, _, _ = select.select([self._from_browser], [], [], remaining)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def requested_urls(self) -> list[str]:
        """Every URL the page asked for (``Network`` must be enabled)."""
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def page_errors(self, *, console: bool = True) -> list[str]:
        """Exceptions and error log entries (and, with ``console``, console errors/asserts)."""
        return [
            json.dumps(e["params"])[:300]
            for e in self.events
            if e.get("method") == "Runtime.exceptionThrown"
            or (
                console
                and e.get("method") == "Runtime.consoleAPICalled"
                and e["params"]["type"] in {"error", "assert"}
            )
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        ]

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5.0)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def test_report_opens_offline_without_errors(tmp_path: Path) -> None:
    report = build_fixture_report(tmp_path / "project")
    browser = DevToolsPipe(tmp_path / "chromium-profile")
    try:
        targets = browser.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        session = browser.send(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}
        )["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        browser.send("Page.navigate", {"url": report.as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired", timeout=60)
        # Let late requests (fonts, lazy images) surface before judging.
        time.sleep(1.0)
        browser.send("Runtime.evaluate", {"expression": "1"}, session=session)
        title = browser.send(
            "Runtime.evaluate",
            {"expression": "document.title", "returnByValue": True},
            session=session,
        )["result"]["value"]
        headings = browser.send(
            "Runtime.evaluate",
            {"expression": "document.querySelectorAll('h2').length", "returnByValue": True},
            session=session,
        )["result"]["value"]
        svgs = browser.send(
            "Runtime.evaluate",
            {"expression": "document.querySelectorAll('svg').length", "returnByValue": True},
            session=session,
        )["result"]["value"]
        # The tiny inline sort: clicking a header re-orders the ICB table without errors.
        sorted_ok = browser.send(
            "Runtime.evaluate",
            {
                "expression": (
                    "(() => { const t = document.querySelector('table.sortable');"
                    " if (!t) return 'no table';"
                    " const th = t.querySelectorAll('th')[0]; th.click(); th.click();"
                    " return t.querySelector('th[aria-sort]') ? 'sorted' : 'unsorted'; })()"
                ),
                "returnByValue": True,
            },
            session=session,
        )["result"]["value"]
        metrics = browser.send("Page.getLayoutMetrics", session=session)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = browser.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": 1200,
                    "height": min(size["height"], 16000),
                    "scale": 1,
                },
            },
            session=session,
            timeout=60,
        )
    finally:
        browser.close()

    requests = browser.requested_urls()
    errors = browser.page_errors()
    screenshot = Path(os.environ.get("REPORT_SCREENSHOT", tmp_path / "equity_report.png"))
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.write_bytes(base64.b64decode(shot["data"]))

    assert errors == [], f"console errors: {errors}"
    assert requests == [report.as_uri()], f"the report fetched: {requests}"
    assert title and "equity" in title.lower()
    assert headings >= 10
    assert svgs >= 8
    assert sorted_ok == "sorted"
    assert screenshot.stat().st_size > 50_000


def _open_page(browser: DevToolsPipe, report: Path) -> str:
    """Attach to the browser's page, load ``report`` and return the session id."""
    targets = browser.send("Target.getTargets")["targetInfos"]
    page = next(t for t in targets if t["type"] == "page")
    session = browser.send(
        "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}
    )["sessionId"]
    browser.send("Page.enable", session=session)
    browser.send("Page.navigate", {"url": report.as_uri()}, session=session)
    browser.wait_for("Page.loadEventFired", timeout=60)
    return session


def _evaluate(browser: DevToolsPipe, session: str, expression: str) -> Any:
    reply = browser.send(
        "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session
    )
    return reply["result"].get("value")


def _pdf_pages(pdf: bytes) -> int:
    """Pages of a PDF as Chromium writes it (one ``/Type /Page`` object per page)."""
    import re

    return len(re.findall(rb"/Type\s*/Page[^s]", pdf))


def test_summary_first_details_collapsed_and_a_short_print(tmp_path: Path) -> None:
    """Printed with the details collapsed, the report is the summary plus one line per section;
    a contents link opens the section it points to; charts are drawn wider than their spec."""
    report = build_fixture_report(tmp_path / "project")
    browser = DevToolsPipe(tmp_path / "chromium-profile")
    try:
        session = _open_page(browser, report)
        first = _evaluate(browser, session, "document.querySelector('main section').id")
        closed = _evaluate(
            browser,
            session,
            "[...document.querySelectorAll('details')].filter(d => !d.open).length",
        )
        collapsed = browser.send("Page.printToPDF", {"printBackground": True}, session=session)
        _evaluate(browser, session, "document.querySelector('a[href=\"#mitigation\"]').click()")
        time.sleep(0.3)
        opened = _evaluate(browser, session, "document.querySelector('#mitigation details').open")
        _evaluate(
            browser, session, "document.querySelectorAll('details').forEach(d => d.open = true)"
        )
        widest = _evaluate(
            browser,
            session,
            "Math.max(...[...document.querySelectorAll('figure svg')].map(s => "
            "s.getBoundingClientRect().width / s.width.baseVal.value))",
        )
        expanded = browser.send("Page.printToPDF", {"printBackground": True}, session=session)
    finally:
        browser.close()
    assert first == "summary"
    assert closed >= 12
    assert opened is True
    assert widest > 1.2  # charts are laid out wider than their spec (~230 px before)
    pages = _pdf_pages(base64.b64decode(collapsed["data"]))
    assert 1 <= pages <= 20, pages
    assert _pdf_pages(base64.b64decode(expanded["data"])) > pages
