"""The experiment configuration schema: typed dataclasses (OmegaConf structured configs), one per section.

Every field has a docstring under it giving its meaning and unit; `jepa config docs` reads them from
this file's source (jepa/config/docs.py) to write docs/configs.md. Loading, composition and
key checks live in jepa/config/load.py, value rules in jepa/config/rules.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from jepa.config.evaluation import EvalConfig, ProbeConfig


@dataclass
class RopeConfig:
    kind: str = "2d"
    """Rotary position embedding: `2d` (images, H x W axes), `3d` (video, T x H x W axes) or `none`."""
    variant: str = "axial"
    """`axial`: each axis rotates its own slice of the head dim with fixed frequencies; `mixed`:
    learnable frequencies that mix the axes (2D only, rope-vit style)."""
    theta: float = 100.0
    """Base of the frequency ladder: pair i of an axis with d channels turns at theta^(-2i/d) rad per
    coordinate unit, times 2*pi for `centre` coords (DINOv3 periods). 3D: head_dim // 2 pairs split
    equally into [t | h | w]; the remainder pairs pass through unrotated."""
    coords: str = "centre"
    """Token coordinates: `centre` (cell centres mapped to [-1, 1], DINOv3 style, resolution-free) or
    `index` (integer patch indices 0..n-1, rope-vit style)."""
    normalize: str = "separate"
    """For `centre` coords: `separate` divides each axis by its own length, `max`/`min` divide every
    axis by the largest / smallest grid side (keeps aspect ratio). `index` coords need `separate`."""
    temporal_scale: float = 1.0
    """3D only: temporal coordinates are divided by this (0.5 doubles temporal angles, 2.0 halves them)."""
    shift: float = 0.0
    """Train-time augmentation: uniform shift of all coordinates in [-shift, shift] (coord units); 0 = off."""
    jitter: float = 0.0
    """Train-time augmentation: per-axis scale factor drawn log-uniformly in [1/(1+j), 1+j]; 0 = off."""
    rescale: float = 0.0
    """Train-time augmentation: one scale factor for all axes, log-uniform in [1/(1+r), 1+r]; 0 = off."""


@dataclass
class PredictorConfig:
    embed_dim: int = 384
    """Predictor width (channels); the context features are projected to it and back."""
    depth: int = 12
    """Number of transformer blocks in the predictor."""
    num_heads: int = 12
    """Attention heads in the predictor; embed_dim / num_heads must satisfy the RoPE split."""
    per_block: bool = False
    """True: one predictor sequence per target block (I-JEPA); False: all target tokens in one sequence."""
    abs_pos: bool = True
    """Add sin-cos absolute positions to the predictor's context and mask tokens, besides RoPE (I-JEPA's
    predictor adds them too). Every mask token is the same learned vector: with RoPE alone, queries at
    two target positions differ only by a rotation that small heads barely resolve, and the tiny
    demo's trained predictor gave every target token of an image nearly the same prediction."""


@dataclass
class ModelConfig:
    backbone: str = "vit"
    """Encoder family: `vit` (patch or tubelet ViT that drops masked tokens) or `mvit_v2_s`
    (torchvision MViT v2 S for video; masked tokens replaced by a learned mask token)."""
    size: str = "tiny"
    """ViT size by name: tiny, small, base, large, huge, giant. `embed_dim`/`depth`/`num_heads` override it."""
    embed_dim: Optional[int] = None
    """Encoder width (channels); null = from `size`."""
    depth: Optional[int] = None
    """Number of encoder blocks; null = from `size`."""
    num_heads: Optional[int] = None
    """Attention heads per block; null = from `size`."""
    mlp_ratio: float = 4.0
    """Hidden width of each MLP as a multiple of embed_dim."""
    patch_size: int = 16
    """Spatial patch side (pixels)."""
    tubelet_size: int = 2
    """Video only: frames per tubelet (temporal patch length)."""
    abs_pos: bool = False
    """Add fixed sin-cos absolute position embeddings (in addition to or instead of RoPE)."""
    drop_path: float = 0.0
    """Stochastic depth rate at the last block (linearly increasing from 0)."""
    activation_checkpointing: bool = False
    """Recompute block activations in backward to save memory."""
    compile: Optional[bool] = None
    """torch.compile each transformer block of the ViT encoders and the predictor (regional
    compilation, dynamic token counts: masks cause no recompiles). null = on for a ViT on CUDA, off
    on CPU (measured there at 1.02-1.14x the eager step for 36-49 s of compilation,
    benchmarks/README.md) and for MViT, which has no compiled blocks."""
    mvit_rel_pos: bool = True
    """MViT only: keep torchvision's relative position bias alongside RoPE."""
    rope: RopeConfig = field(default_factory=RopeConfig)
    """Rotary position embedding of encoder and predictor."""
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    """The narrow predictor transformer."""


@dataclass
class BlockMaskConfig:
    num_blocks: int = 4
    """How many blocks of this kind are drawn per sample; the target is their union."""
    spatial_scale: List[float] = field(default_factory=lambda: [0.15, 0.2])
    """[min, max] fraction of the H x W grid covered by one block."""
    temporal_scale: List[float] = field(default_factory=lambda: [1.0, 1.0])
    """Video only: [min, max] fraction of the time axis covered by one block."""
    aspect_ratio: List[float] = field(default_factory=lambda: [0.75, 1.5])
    """[min, max] height/width ratio of a block, drawn log-uniformly and independently of its scale."""


@dataclass
class MaskConfig:
    kind: str = "multiblock2d"
    """`multiblock2d` (I-JEPA), `multiblock3d` (V-JEPA) or `tube` (random spatial cells, all frames)."""
    targets: List[BlockMaskConfig] = field(default_factory=lambda: [BlockMaskConfig()])
    """Target block kinds. multiblock2d: each block is a separate target; multiblock3d: each kind is
    a separate mask (context = everything outside its targets)."""
    context_scale: List[float] = field(default_factory=lambda: [0.85, 1.0])
    """multiblock2d: [min, max] fraction of the grid covered by the context block before targets are removed."""
    context_aspect_ratio: List[float] = field(default_factory=lambda: [1.0, 1.0])
    """multiblock2d: [min, max] aspect ratio of the context block."""
    tube_ratio: float = 0.9
    """tube: fraction of spatial cells masked (as targets) through all frames."""
    min_keep: int = 10
    """Fewest context tokens a mask may leave; fewer is an error."""
    max_tries: int = 20
    """Block masks: a sample left with fewer than min_keep context tokens is redrawn with fresh blocks
    up to this many times; still short is an error naming the grid and scales."""


@dataclass
class LevelConfig:
    block: int = -1
    """Encoder block whose output is this level's target (0-based; negative counts from the end)."""
    pool: int = 1
    """Average-pooling factor over the spatial token grid (H and W) for this level's targets."""
    pool_t: int = 1
    """Video only: average-pooling factor over the temporal token axis."""
    weight: float = 1.0
    """Weight of this level's loss in the total."""


@dataclass
class HierarchyConfig:
    levels: List[LevelConfig] = field(default_factory=lambda: [LevelConfig()])
    """Prediction levels (H-JEPA). One level with pool 1 on the last block is plain I-JEPA / V-JEPA."""
    loss: str = "smooth_l1"
    """Per-level regression loss between prediction and layer-normed target: `l1` or `smooth_l1`."""


@dataclass
class SourceConfig:
    urls: str = ""
    """WebDataset shard URLs: brace pattern (`/data/in-{000..127}.tar`), list separated by `::`,
    or `pipe:` commands (`pipe:cat /data/x.tar`)."""
    kind: str = "image"
    """What the shards hold: `image` or `video`."""
    weight: float = 1.0
    """Sampling weight of this source in a mixed stream."""


@dataclass
class DataConfig:
    sources: List[SourceConfig] = field(default_factory=list)
    """Training sources, mixed by weight."""
    val_urls: str = ""
    """Labelled shards the online kNN queries (see `eval.every_steps`); empty = none."""
    batch_size: int = 32
    """Samples per micro-batch on each rank."""
    num_workers: int = 2
    """DataLoader worker processes per rank."""
    samples_per_epoch: int = 10000
    """Samples a rank draws per epoch of the resampled stream (an epoch is a reseed point, not a pass)."""
    shuffle_buffer: int = 1000
    """Samples held in each worker's shuffle buffer."""
    image_size: int = 224
    """Side of the square training crop (pixels); must be a multiple of model.patch_size."""
    crop_scale: List[float] = field(default_factory=lambda: [0.3, 1.0])
    """[min, max] area fraction of random-resized-crop."""
    hflip: bool = True
    """Random horizontal flip during pretraining."""
    num_frames: int = 16
    """Video: frames per clip; must be a multiple of model.tubelet_size."""
    frame_step: int = 4
    """Video: stride between sampled frames (source frames)."""
    target_fps: Optional[float] = None
    """Video: sample at this rate instead of `frame_step` (frames per second); null = use frame_step."""
    clips_per_video: int = 1
    """Video: independent clips drawn from each video."""
    eval_clips: int = 1
    """Evaluation (probes, online kNN): clips per video, evenly spaced over it (1 = the centre clip);
    a video's features are the mean over its clips and views."""
    eval_views: int = 1
    """Evaluation: square crops per image or clip, evenly spaced along the longer side (1 = the centre
    crop, 3 = both ends and the centre)."""
    short_video: str = "pad"
    """Video shorter than one clip: `pad` (repeat the last frame) or `skip`."""
    decoder: str = "pyav"
    """Video decoder: `pyav` or `torchcodec` (if installed)."""
    max_error_fraction: float = 0.5
    """Stop with an error when more than this fraction of the first `error_window` samples (and
    shards) of a stream fail; a stream where every one of them fails stops too. Skips are counted
    and logged either way (docs/data.md)."""
    error_window: int = 1000
    """Samples and shards at the start of each stream (each training worker; each evaluation) over
    which `max_error_fraction` is judged."""


@dataclass
class LossSpikeConfig:
    enabled: bool = False
    """Skip an optimizer step whose loss exceeds mean + k * std of the recent window."""
    window: int = 100
    """Number of recent losses in the running statistics."""
    k: float = 6.0
    """Standard deviations above the mean that count as a spike."""


@dataclass
class OptimConfig:
    total_steps: int = 1000
    """Optimizer steps in the whole run (schedules end here)."""
    warmup_steps: int = 100
    """Optimizer steps of linear lr warmup from start_lr to lr."""
    lr: float = 1e-3
    """Peak learning rate (after warmup)."""
    start_lr: float = 2e-4
    """Learning rate at step 0."""
    final_lr: float = 1e-6
    """Learning rate at total_steps (cosine decay from lr)."""
    weight_decay: float = 0.04
    """Weight decay at step 0 (AdamW, not applied to biases, norms and other 1-D params)."""
    final_weight_decay: float = 0.4
    """Weight decay at total_steps (cosine ramp)."""
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 10.0
    """Clip the global gradient norm to this value; 0 = no clipping."""
    loss_spike: LossSpikeConfig = field(default_factory=LossSpikeConfig)
    """Optional guard against loss spikes."""


@dataclass
class EmaConfig:
    momentum: float = 0.996
    """EMA momentum m of the target encoder at step 0; after every optimizer step
    target = m * target + (1 - m) * online."""
    final_momentum: float = 1.0
    """EMA momentum at step optim.total_steps, reached by a straight line from `momentum` at step 0
    (the last update, at step total_steps - 1, uses the value one step short of it). The default is
    I-JEPA's: 0.996 -> 1.0 over exactly its run (ipe_scale 1.0 in its published configs). V-JEPA ramps
    0.998 -> 1.0 over 1.25 times its run (ipe_scale 1.25), so it ends at 0.998 + 0.002 / 1.25 = 0.9996.
    Momentum m averages over about the last 1 / (1 - m) steps (250 at 0.996, 2500 at 0.9996): the
    closer the end value is to 1, the less the last steps of training change the target; at exactly
    1.0 the target stops moving."""


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 0
    """ZeRO stage 0 (DDP), 1 (optimizer states), 2 (+ gradients) or 3 (+ parameters)."""
    bf16: bool = False
    """Train in bfloat16 (the EMA target stays fp32 outside the engine)."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    zero3_persistence_threshold: int = 100000
    """ZeRO-3 only: parameters with fewer elements than this stay whole on every rank instead of
    being partitioned (saves gathering many small tensors); 0 partitions every parameter."""
    bucket_size: int = 50_000_000
    """Elements per gradient-reduction and all-gather bucket (ZeRO 1-3). ZeRO-3 allocates its reduce
    buffer at this size up front: 5e7 elements is 100 MB in bf16 per rank (DeepSpeed's own default,
    5e8, would be 1 GB). Larger buckets mean fewer, bigger collectives."""


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    """Save a checkpoint every this many optimizer steps (and always at the end of the job)."""
    keep_last: int = 3
    """Checkpoints kept on disk; older ones are deleted after a complete save."""
    resume: bool = True
    """Resume automatically from output_dir/checkpoints when one exists."""
    stop_at_step: Optional[int] = None
    """Save and stop this job once the global step reaches this value (schedules still run to
    optim.total_steps, so a later job resumes seamlessly); null = train to optim.total_steps."""


@dataclass
class LoggingConfig:
    every_steps: int = 10
    """Console line and TensorBoard scalars every this many optimizer steps."""
    repr_every_steps: int = 100
    """Collapse diagnostics (target feature std, effective rank) every this many steps."""
    tensorboard: bool = True
    """Write TensorBoard events to output_dir/tb."""
    peak_tflops: Optional[float] = None
    """Peak dense matmul TFLOPS of one device, the denominator of `time/mfu`. null = from the table of
    known GPUs (H100/H200 989 bf16, A100 312 bf16, ...; jepa/train/flops.py) in the run's precision,
    or on CPU from a short matmul probe at start."""


@dataclass
class LaunchConfig:
    """How `jepa submit` runs this config: a submitit executor (SLURM, or this machine), the job's
    resources, and what happens at preemption and time-out (docs/cluster.md). `jepa train` reads none
    of these keys."""

    cluster: str = "slurm"
    """Where `jepa submit` runs the job: `slurm` (sbatch, one task per rank), `local` (real processes on
    this machine, one per rank, with a time limit and requeues like SLURM's) or `debug` (in the
    submitting process, one rank: for debugging the launch itself)."""
    nodes: int = 1
    """Nodes per job (SLURM only; `local` runs on one)."""
    tasks_per_node: int = 1
    """Processes (ranks) per node; usually one per GPU (each rank takes the GPU of its local rank)."""
    gpus_per_node: int = 0
    """GPUs requested per node; 0 asks for none (no `--gpus-per-node` line)."""
    cpus_per_task: int = 8
    """CPU cores per rank (SLURM `--cpus-per-task`)."""
    mem_gb: int = 64
    """Memory per node (GiB; SLURM `--mem`)."""
    timeout_min: int = 240
    """Wall time of one job (minutes). At `signal_delay_s` before it the job saves and requeues itself."""
    partition: str = ""
    """SLURM partition; empty = the cluster's default."""
    account: str = ""
    """SLURM account; empty = none."""
    qos: str = ""
    """SLURM QoS; empty = none."""
    constraint: str = ""
    """SLURM node constraint (`--constraint`); empty = none."""
    slurm_extra: List[str] = field(default_factory=list)
    """Further sbatch options, each `name=value` or a bare flag `name`, without the dashes, e.g.
    `[exclusive, mail-type=END, reservation=big]`; written as `#SBATCH --name=value` lines."""
    setup: List[str] = field(default_factory=list)
    """Shell lines the job runs before starting its ranks (module loads, environment activation)."""
    max_requeues: int = 10
    """Most times a job requeues itself (SLURM: counted by SLURM_RESTART_COUNT, so requeues after
    preemption count too). Past it the job saves, stops and says so; submit again to go on."""
    signal_delay_s: int = 120
    """Seconds before the time limit at which the job is sent SIGUSR2: every rank finishes its step,
    the run saves and the job requeues. Leave room for one step and one checkpoint save."""
    name: str = "jepa"
    """Job name (SLURM `--job-name`)."""


@dataclass
class Config:
    output_dir: str = "runs/default"
    """Run folder: config.yaml, checkpoints/, tb/, train.log."""
    seed: int = 0
    """Seed of every random stream (model init, masks, data order)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Encoders and predictor."""
    mask: MaskConfig = field(default_factory=MaskConfig)
    """Context/target mask sampling."""
    hierarchy: HierarchyConfig = field(default_factory=HierarchyConfig)
    """Prediction levels and loss."""
    data: DataConfig = field(default_factory=DataConfig)
    """Shards, transforms, loader."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedules."""
    ema: EmaConfig = field(default_factory=EmaConfig)
    """Target encoder EMA."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    """ZeRO, precision, accumulation."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Saving and resuming."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Console and TensorBoard."""
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    """Cluster submission with `jepa submit`."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """What `jepa probe` trains and how it chooses."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Online kNN during pretraining."""
