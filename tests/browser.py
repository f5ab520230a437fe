"""A headless Chromium driven over the DevTools protocol (CDP), for testing generated pages.

`Browser()` launches `chromium --headless` on a free debugging port, attaches to its page and
records what a reader would see go wrong: console errors, uncaught exceptions and error log
entries (a failed image load is one). `open(url)` navigates and waits for the load event.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import websocket

BINARY = "chromium"
MISSING = (
    f"the {BINARY!r} browser is not installed; 'make test' installs it "
    "(Debian/Ubuntu: apt-get install chromium)"
)


class BrowserError(RuntimeError):
    pass


@dataclass
class PageErrors:
    console: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        return [*self.console, *self.exceptions, *self.log]


class Browser:
    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0):
        binary = shutil.which(BINARY)
        if binary is None:
            raise BrowserError(MISSING)
        self.timeout = timeout
        self.errors = PageErrors()
        self._profile = tempfile.TemporaryDirectory(
            prefix="fiqa-chromium-", ignore_cleanup_errors=True
        )
        self._process = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile.name}",
                f"--window-size={width},{height}",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-gpu",
                "--disable-extensions",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._next_id = 0
        try:
            port = self._port()
            self._socket = websocket.create_connection(
                self._page_socket(port), timeout=timeout, suppress_origin=True
            )
            for domain in ("Runtime", "Log", "Page"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def _port(self) -> int:
        """Chromium writes the port it chose to DevToolsActivePort in its profile."""
        marker = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrowserError(f"{BINARY} exited with status {self._process.returncode}")
            lines = marker.read_text().splitlines() if marker.exists() else []
            if lines and lines[0].isdigit():
                return int(lines[0])
            time.sleep(0.1)
        raise BrowserError(f"{BINARY} did not open its debugging port in {self.timeout} s")

    def _page_socket(self, port: int) -> str:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as response:
                targets = json.load(response)
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.1)
        raise BrowserError(f"{BINARY} opened no page")

    def call(self, method: str, **params) -> dict:
        """Send one command and return its result; events arriving meanwhile are recorded."""
        self._next_id += 1
        message_id = self._next_id
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = self._receive()
            if message.get("id") == message_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def wait_for(self, event: str) -> dict:
        while True:
            message = self._receive()
            if message.get("method") == event:
                return message.get("params", {})

    def _receive(self) -> dict:
        try:
            message = json.loads(self._socket.recv())
        except websocket.WebSocketTimeoutException:
            raise BrowserError(f"no answer from {BINARY} in {self.timeout} s") from None
        self._record(message.get("method"), message.get("params", {}))
        return message

    def _record(self, method: str | None, params: dict) -> None:
        if method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = params.get("args", [])
            self.errors.console.append(" ".join(str(a.get("value", a)) for a in args))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description")
            self.errors.exceptions.append(description or details.get("text", ""))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.log.append(f"{entry.get('text')} ({entry.get('url', '')})")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def broken_images(self) -> list[str]:
        """The src of every <img> that did not load (no decoded pixels)."""
        return self.evaluate(
            "Array.from(document.images)"
            ".filter(i => !(i.complete && i.naturalWidth > 0))"
            ".map(i => i.getAttribute('src'))"
        )

    def screenshot(self, path: Path, scale: float = 1.0) -> None:
        """A PNG of the whole page, beyond the viewport; `scale` < 1 shrinks it."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": scale}
        shot = self.call(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip
        )
        Path(path).write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        socket = getattr(self, "_socket", None)
        if socket is not None:
            socket.close()
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
