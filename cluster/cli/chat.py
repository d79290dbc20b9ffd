"""``avatarctl chat`` and ``avatarctl say``: the conversation core in a terminal."""

from __future__ import annotations

import asyncio
import json
import time
import wave
from pathlib import Path

import numpy as np
import typer
from pydantic import ValidationError
from rich.table import Table

from cluster.cli.common import (
    ConfigOption,
    JsonOption,
    console,
    friendly_errors,
    load,
    print_json,
    with_status,
)
from configs.loader import format_validation_error
from configs.schema import TTSConfig
from deployments.timing import MARKS
from models.errors import ConfigError, InputError


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
    app.command("say")(say)


def chat(
    config: str = ConfigOption,
    persona: str | None = typer.Option(None, help="Persona in configs/personas/ (default: the "
                                       "profile's)."),
    timings: bool = typer.Option(True, help="Show the latency marks of every turn."),
    save_audio: Path | None = typer.Option(None, help="Write each reply as a WAV in this folder."),
    export_timings: Path | None = typer.Option(
        None, help="Append each turn's timing marks (ms on the session clock) to this JSON-lines "
        "file."),
) -> None:
    """Talk to the avatar by typing. Replies stream as they are generated; each turn shows
    when the first audio was ready. Type /quit (or Ctrl-D) to leave."""
    from deployments.services import build_services

    cfg = load(config)
    with friendly_errors():
        services = with_status("loading models", lambda p: build_services(cfg, persona, progress=p))
    asyncio.run(_chat_loop(services, timings, save_audio, export_timings))


async def _chat_loop(services, show_timings: bool, save_audio: Path | None,
                     export_timings: Path | None) -> None:
    from deployments.session import open_conductor

    conductor = await open_conductor(services, with_asr=False)
    console.print(f"[bold]{services.persona.display_name}[/]: {services.persona.greeting}")
    if save_audio:
        save_audio.mkdir(parents=True, exist_ok=True)
    try:
        while True:
            try:
                text = await asyncio.to_thread(console.input, "[bold cyan]you[/]: ")
            except (EOFError, KeyboardInterrupt):
                break
            if text.strip() in ("/quit", "/exit"):
                break
            try:
                await conductor.send_text(text)
            except InputError as exc:
                console.print(f"[red]{exc.message}[/]")
                continue
            end, audio = await _print_reply(conductor, services.persona.display_name)
            if save_audio and audio:
                _write_wav(save_audio / f"turn-{end.turn_id:03d}.wav", audio)
            if show_timings:
                _print_marks(end.marks)
            if export_timings:
                with export_timings.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"turn_id": end.turn_id, "source": "text",
                                        "refused": end.refused, "marks_ms": end.marks}) + "\n")
    finally:
        await conductor.aclose()
        await services.aclose()


async def _print_reply(conductor, name: str):
    from models.frames import SpeechAudio, TextDelta, TurnEnd

    console.print(f"[bold]{name}[/]: ", end="")
    audio: list[SpeechAudio] = []
    streamed = False
    async for event in conductor.events():
        if isinstance(event, TextDelta):
            console.print(event.text, end="", highlight=False)
            streamed = True
        elif isinstance(event, SpeechAudio):
            audio.append(event)
        elif isinstance(event, TurnEnd):
            # refusals and apologies are spoken without a streamed text
            console.print("" if streamed else event.text, highlight=False)
            return event, audio
    raise RuntimeError("conversation ended")


def _print_marks(marks: dict[str, float]) -> None:
    start = marks.get("asr_final", 0.0)
    parts = [f"{name} +{marks[name] - start:.0f}" for name in MARKS if name in marks
             and marks[name] >= start]
    console.print(f"[dim]  ms: {', '.join(parts)}[/]", highlight=False)


def _write_wav(path: Path, audio) -> None:
    rate = audio[0].sample_rate_hz
    pcm = np.concatenate([a.pcm for a in audio]).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def say(
    text: str = typer.Argument(..., help="What the avatar should say."),
    out: Path = typer.Option(Path("reply.wav"), "--out", "-o", help="WAV file to write, or an "
                             ".mp4 for the avatar saying it (H.264 + AAC); the phoneme timings "
                             "go beside it as NAME.phonemes.json."),
    config: str = ConfigOption,
    tts: str | None = typer.Option(None, help="TTS backend (espeak, piper, nemo); default: the "
                                   "profile's."),
    voice: str | None = typer.Option(None, help="Backend voice name."),
    avatar: str = typer.Option("default", help="Avatar pack (name in configs/avatars/ or a "
                               "folder) for an .mp4."),
    size: int = typer.Option(256, help="Video frame size in pixels for an .mp4: 256 or 512."),
    fps: int = typer.Option(25, min=1, max=60, help="Video frame rate for an .mp4."),
    json_out: bool = JsonOption,
) -> None:
    """Synthesise TEXT with the avatar's voice: audio plus phoneme timings (IPA, ms). With
    ``--out NAME.mp4`` the avatar is rendered saying it and muxed with the audio."""
    from models.tts import create_tts

    cfg = load(config)
    tts_cfg = cfg.models.tts
    updates = {k: v for k, v in {"backend": tts, "voice": voice}.items() if v is not None}
    with friendly_errors():
        if updates:
            try:
                tts_cfg = tts_cfg.model_validate({**tts_cfg.model_dump(), **updates})
            except ValidationError as exc:
                raise ConfigError(format_validation_error(
                    exc, TTSConfig, "command line (--tts/--voice)").replace(
                    ": backend:", ": --tts:")) from None
        engine = create_tts(tts_cfg)
        if out.suffix.lower() == ".mp4":
            summary = _say_video(text, out, engine, avatar, size, fps, quiet=json_out)
            _print_summary(summary, json_out)
            return
        t0 = time.perf_counter()
        first_ms = None
        chunks = []
        for chunk in engine.synthesize(text):
            first_ms = first_ms if first_ms is not None else (time.perf_counter() - t0) * 1e3
            chunks.append(chunk)
        total_ms = (time.perf_counter() - t0) * 1e3
    if not chunks:
        raise typer.Exit(1)
    rate = chunks[0].sample_rate_hz
    pcm = np.concatenate([c.pcm for c in chunks]).astype(np.int16)
    out.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    phonemes = [{"phoneme": p.phoneme, "start_ms": round(p.start_ms, 2),
                 "duration_ms": round(p.duration_ms, 2)} for c in chunks for p in c.phonemes]
    side = out.with_suffix(".phonemes.json")
    side.write_text(json.dumps({"text": text, "sample_rate_hz": rate, "phonemes": phonemes},
                               indent=1))
    summary = {"wav": str(out), "phonemes_json": str(side), "backend": engine.name,
               "audio_ms": round(1000 * len(pcm) / rate, 1), "phonemes": len(phonemes),
               "first_audio_ms": round(first_ms or 0.0, 1), "synth_ms": round(total_ms, 1)}
    _print_summary(summary, json_out)


def _print_summary(summary: dict, json_out: bool) -> None:
    if json_out:
        print_json(summary)
        return
    table = Table(show_header=False, box=None)
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table)


def _say_video(text: str, out: Path, engine, avatar: str, size: int, fps: int,
               quiet: bool) -> dict:
    """Render the avatar saying ``text`` into ``out`` (.mp4); phoneme times in the JSON beside
    it are on the video's timeline (the speech starts after the lead-in)."""
    from models.render.offline import create_renderer, render_utterance
    from models.render.pack import load_pack
    from models.render.video import write_mp4

    if size not in (256, 512):
        raise InputError(f"--size must be 256 or 512, got {size}")

    def work(progress) -> tuple:
        progress("loading the avatar")
        renderer = create_renderer(size_px=size, device="cpu")
        slot = renderer.add_avatar(load_pack(avatar))
        t0 = time.perf_counter()
        utt = render_utterance(text, renderer=renderer, slot=slot, tts=engine, fps=fps,
                               on_progress=lambda done, n: progress(f"frame {done}/{n}"))
        render_ms = (time.perf_counter() - t0) * 1e3
        progress("encoding")
        write_mp4(out, utt.frames, fps, utt.audio, utt.rate)
        return utt, render_ms

    utt, render_ms = with_status("rendering", work, quiet=quiet)
    phonemes = [{"phoneme": p.phoneme, "start_ms": round(p.start_ms, 2),
                 "duration_ms": round(p.duration_ms, 2)} for p in utt.phonemes]
    side = out.with_suffix(".phonemes.json")
    side.write_text(json.dumps({"text": text, "sample_rate_hz": utt.rate,
                                "speech_start_ms": utt.speech_start_ms,
                                "phonemes": phonemes}, indent=1))
    return {"mp4": str(out), "phonemes_json": str(side), "backend": engine.name,
            "avatar": avatar, "size_px": size, "audio_ms": round(utt.audio_ms, 1),
            "phonemes": len(phonemes), "frames": len(utt.frames), "fps": fps,
            "video_ms": round(utt.duration_ms, 1), "render_ms": round(render_ms, 1)}
