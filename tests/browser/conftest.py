"""Browser-test fixtures: the real Gateway app served on 127.0.0.1 by uvicorn in a background
thread (one in-process renderer, no Ray), and headless Chromium driven by Playwright with a fake
microphone that plays a WAV file."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
MIC_RATE_HZ = 48000
SERVER_START_TIMEOUT_S = 120.0


class GatewayServer(threading.Thread):
    """``create_api(Gateway(...))`` over an in-process renderer, served by uvicorn on its own
    event loop; the renderer is built on that loop so its tasks (render loop, peers) live there.
    """

    def __init__(self, data_dir: Path) -> None:
        super().__init__(name="gateway-server", daemon=True)
        self.data_dir = data_dir
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.url = ""
        self._server: Any = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test thread by start()
            self.error = exc
        finally:
            self.ready.set()

    async def _main(self) -> None:
        import uvicorn

        from configs import load_config
        from deployments.api import create_api
        from deployments.gateway import Gateway, LocalRendererClient
        from deployments.renderer import renderer_from_services
        from deployments.services import build_services
        from deployments.session_store import SQLiteSessionStore

        qdrant = self.data_dir / "qdrant"
        config = load_config("local", overrides={"models": {"knowledge": {
            "qdrant_path": str(qdrant)}}})
        services = build_services(config)
        store = SQLiteSessionStore(self.data_dir / "sessions.sqlite3")
        renderer = renderer_from_services(services, store)
        gateway = Gateway(config, LocalRendererClient(renderer))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(create_api(gateway), log_level="warning",
                                                     lifespan="off"))
        serving = asyncio.create_task(self._server.serve(sockets=[sock]))
        try:
            while not self._server.started and not serving.done():
                await asyncio.sleep(0.05)
            self.ready.set()
            await serving
        finally:
            await gateway.aclose()
            await renderer.aclose()
            with contextlib.suppress(Exception):
                await services.aclose()
            store.close()
            sock.close()

    def start_and_wait(self) -> str:
        """Start the thread; the server's base URL once it accepts connections."""
        self.start()
        if not self.ready.wait(SERVER_START_TIMEOUT_S):
            raise TimeoutError(f"the gateway did not start within {SERVER_START_TIMEOUT_S} s")
        if self.error is not None or not self.url:
            raise RuntimeError(f"the gateway failed to start: {self.error!r}")
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self.join(timeout=30)


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a live Gateway (web client at ``/``) on 127.0.0.1."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("aiortc")
    server = GatewayServer(tmp_path_factory.mktemp("gateway"))
    try:
        yield server.start_and_wait()
    finally:
        server.stop()


def write_mic_wav(path: Path, text: str, before_s: float, after_s: float) -> Path:
    """A mono PCM16 WAV of ``text`` spoken by the test voice, with silence around it."""
    from tests.speech import speak

    speech = speak(text, MIC_RATE_HZ)
    pcm = np.concatenate([np.zeros(int(before_s * MIC_RATE_HZ), np.int16), speech,
                          np.zeros(int(after_s * MIC_RATE_HZ), np.int16)])
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(MIC_RATE_HZ)
        wav.writeframes(pcm.astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium context whose fake microphone asks "Where can I park?" (looped
    by Chromium; the long trailing silence keeps the first answer uninterrupted)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    root = tmp_path_factory.mktemp("chromium")
    wav = write_mic_wav(root / "mic.wav", "Where can I park?", before_s=1.0, after_s=12.0)
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(root / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-audio-capture={wav}",
                  "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            yield context
        finally:
            context.close()
