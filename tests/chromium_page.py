"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol: open a file or a
URL, record every network request the page makes, read element boxes, wait on DOM conditions,
click and type as a person does (real mouse and keyboard input events), take a screenshot.

Launched as the env notes say for root: `--no-sandbox`, no GPU, no QUIC, no background
networking (the machine's closed network refuses those connections), an empty profile.

Every wait polls what the page shows, up to a deadline generous enough for a loaded machine (a
suite beside other suites: pages render, and the UI refreshes its lists, many times slower); no
wait is a fixed sleep, so a quick page costs nothing."""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
]
# Deadlines (seconds) of the waits below: what the page does under load, not what it should do.
START_S = 90  # the browser's DevTools endpoint and its first page
ANSWER_S = 60  # one DevTools command's answer
WAIT_S = 60  # a DOM condition (an element to click, a value typed in)


def chromium_binary() -> str | None:
    return shutil.which("chromium")


class Page:
    """One page of a headless Chromium process (with its own empty profile)."""

    def __init__(self, width: int = 1200, height: int = 900):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="shipyard-chromium-")
        self.proc = subprocess.Popen(
            [
                chromium_binary() or "chromium",
                *FLAGS,
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        browser_ws = self._devtools_url()
        port = re.search(r":(\d+)/", browser_ws).group(1)  # type: ignore[union-attr]
        import httpx

        deadline = time.monotonic() + START_S
        while True:
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list").json()
            pages = [t for t in targets if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        # No keepalive pings: on loopback they only add a way to fail (a Chromium busy on a
        # loaded machine answered a ping late once, and the client closed the connection: 1011
        # keepalive ping timeout). Each CDP call has its own deadline.
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, ping_interval=None)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def _devtools_url(self) -> str:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                return found.group(1)
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError("chromium did not start its DevTools endpoint")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=ANSWER_S))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float = ANSWER_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for msg in self.events:
            if msg.get("method") == method:
                return msg
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv(timeout=deadline - time.monotonic()))
            self.events.append(msg)
            if msg.get("method") == method:
                return msg
        raise TimeoutError(method)

    def open(self, path: Path) -> None:
        self.send("Network.enable")
        self.send("Page.enable")
        self.send("Page.navigate", url=path.resolve().as_uri())
        self.wait_event("Page.loadEventFired")

    def goto(self, url: str, timeout: float = 120) -> None:
        """Navigate and wait for the load event (a single-page app renders after it: wait on
        the DOM with `wait_for`)."""
        self.send("Page.enable")
        self.events = [m for m in self.events if m.get("method") != "Page.loadEventFired"]
        self.send("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired", timeout=timeout)

    def wait_for(self, expression: str, timeout: float = WAIT_S, what: str = "") -> Any:
        """Evaluate `expression` until it is truthy; its value. TimeoutError names `what` and
        the page's visible text when it never becomes true."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText : ''") or ""
                raise TimeoutError(
                    f"{what or expression} not seen in {timeout:.0f} s on "
                    f"{self.evaluate('location.href')}; the page shows: {text[:1500]!r}"
                )
            time.sleep(0.2)

    def click(self, element: str, timeout: float = WAIT_S, what: str = "") -> None:
        """Click the element a JS expression finds (waited for), with real mouse events at the
        centre of its box: pointerdown/mousedown/mouseup/click, as menus and forms expect.

        The point is clicked only once the element is what the page hit-tests there: a page that
        is still scrolling or shifting its layout (a field losing focus resizes the form) would
        take the click somewhere else, and the click would be lost without a trace."""
        box = self.wait_for(
            f"""(() => {{ const e = {element};
                if (!e) return null;
                e.scrollIntoView({{block: 'center', behavior: 'instant'}});
                const r = e.getBoundingClientRect();
                if (!r.width || !r.height) return null;
                const x = r.x + r.width / 2, y = r.y + r.height / 2;
                const hit = document.elementFromPoint(x, y);
                return hit && (hit === e || e.contains(hit)) ? [x, y] : null;
            }})()""",
            timeout,
            what or element,
        )
        x, y = box
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def type_text(self, text: str) -> None:
        """Type into the focused element (an input event per insertion, as from a keyboard)."""
        self.send("Input.insertText", text=text)

    def requests(self) -> list[str]:
        return [
            m["params"]["request"]["url"]
            for m in self.events
            if m.get("method") == "Network.requestWillBeSent"
        ]

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def screenshot(self, path: Path, beyond_viewport: bool = True) -> None:
        data = self.send(
            "Page.captureScreenshot", format="png", captureBeyondViewport=beyond_viewport
        )
        path.write_bytes(base64.b64decode(data["data"]))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)
