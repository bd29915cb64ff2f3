"""Value rules of the experiment config, one function per section, across sections where values meet.

`validate(cfg)` runs after the schema has checked keys and types (jepa/config/load.py); each error
names the key, the value and what is expected. The sections are checked in a fixed order and the
first broken rule is the error. The last rule builds the RoPE tables the encoder and predictor will
use (jepa/config/rope_check.py) and refuses a head_dim that gives two cells of the token grid the
same rotation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jepa.config.rope_check import rope_row_collision, rope_splits
from jepa.config.sizes import VIT_SIZES, encoder_depth, is_video_model, vit_dims
from jepa.errors import ConfigError

if TYPE_CHECKING:
    from jepa.config.schema import Config, ModelConfig, PredictorConfig, RopeConfig


def validate(cfg: Config) -> None:
    """Value checks across sections; each error names the key, the value and what is expected."""
    _check_model(cfg.model)
    _check_mask(cfg)
    _check_hierarchy(cfg)
    _check_data(cfg)
    _check_optim(cfg)
    _check_ema(cfg)
    _check_deepspeed(cfg)
    _check_checkpoint_and_logging(cfg)
    _check_launch(cfg)
    _check_probe_and_eval(cfg)
    if not cfg.output_dir:
        _fail("output_dir", cfg.output_dir, "give the run folder")
    _check_rope_rows(cfg)


def _check_probe_and_eval(cfg: Config) -> None:
    p, e = cfg.probe, cfg.eval
    if not 0 < p.holdout_fraction < 1:
        _fail("probe.holdout_fraction", p.holdout_fraction, "must lie in (0, 1)")
    for key in ("batch_size", "n_last_blocks", "linear_epochs", "linear_batch_size", "attentive_epochs",
                "attentive_batch_size"):
        _positive(f"probe.{key}", getattr(p, key))
    for key in ("linear_lrs", "linear_weight_decays", "knn_k", "attentive_lrs"):
        values = getattr(p, key)
        if not values or any(v < 0 or (v == 0 and key != "linear_weight_decays") for v in values):
            _fail(f"probe.{key}", values, "give a non-empty list of positive values")
    _positive("probe.knn_temperature", p.knn_temperature)
    _positive("eval.every_steps", e.every_steps, allow_zero=True)
    _positive("eval.knn_k", e.knn_k)
    _positive("eval.knn_temperature", e.knn_temperature)
    if e.every_steps and not (e.bank_urls and cfg.data.val_urls):
        _fail("eval.every_steps", e.every_steps, "the online kNN needs labelled shards in eval.bank_urls (its "
              "memory) and data.val_urls (its queries); set both, or eval.every_steps=0")


# ----------------------------------------------------------------------------- helpers

def _fail(key: str, value: Any, need: str) -> None:
    raise ConfigError(f"`{key}` = {value!r} is invalid: {need}")


def _one_of(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        _fail(key, value, f"expected one of {', '.join(map(str, choices))}")


def _range_pair(key: str, value: list[float], lo: float, hi: float, lo_open: bool = True) -> None:
    if len(value) != 2 or value[0] > value[1]:
        _fail(key, value, "expected [min, max] with min <= max")
    for v in value:
        if (v <= lo if lo_open else v < lo) or v > hi:
            _fail(key, value, f"each bound must lie in {'(' if lo_open else '['}{lo}, {hi}]")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        _fail(key, value, "must be >= 0" if allow_zero else "must be > 0")


# ----------------------------------------------------------------------------- model

def _check_model(m: ModelConfig) -> None:
    _one_of("model.backbone", m.backbone, ("vit", "mvit_v2_s"))
    _one_of("model.size", m.size, tuple(VIT_SIZES))
    _check_rope(m.rope)
    for key in ("patch_size", "tubelet_size"):
        _positive(f"model.{key}", getattr(m, key))
    for key in ("embed_dim", "depth", "num_heads"):
        if getattr(m, key) is not None:
            _positive(f"model.{key}", getattr(m, key))
    _positive("model.mlp_ratio", m.mlp_ratio)
    if not 0 <= m.drop_path < 1:
        _fail("model.drop_path", m.drop_path, "must lie in [0, 1)")
    if m.backbone == "vit":
        dims = vit_dims(m)
        _check_heads("model", dims.embed_dim, dims.num_heads, m.rope)
    if m.backbone == "mvit_v2_s" and m.rope.kind == "2d":
        _fail("model.rope.kind", m.rope.kind, "mvit_v2_s is a video encoder: use 3d or none")
    if m.backbone == "mvit_v2_s" and m.compile:
        _fail("model.compile", m.compile, "compilation covers the ViT's transformer blocks and mvit_v2_s has none: "
              "set model.compile=false (or null)")
    _check_predictor(m.predictor, m.rope)


def _check_rope(r: RopeConfig) -> None:
    _one_of("model.rope.kind", r.kind, ("none", "2d", "3d"))
    _one_of("model.rope.variant", r.variant, ("axial", "mixed"))
    _one_of("model.rope.coords", r.coords, ("centre", "index"))
    _one_of("model.rope.normalize", r.normalize, ("separate", "max", "min"))
    if r.coords == "index" and r.normalize != "separate":
        _fail("model.rope.normalize", r.normalize, "integer `index` coords are not normalised: use `separate`")
    for key in ("theta", "temporal_scale"):
        _positive(f"model.rope.{key}", getattr(r, key))
    for key in ("shift", "jitter", "rescale"):
        _positive(f"model.rope.{key}", getattr(r, key), allow_zero=True)
    if r.variant == "mixed" and r.kind != "2d":
        _fail("model.rope.variant", r.variant, "`mixed` exists for model.rope.kind=2d only")


def _check_predictor(p: PredictorConfig, rope: RopeConfig) -> None:
    for key in ("embed_dim", "depth", "num_heads"):
        _positive(f"model.predictor.{key}", getattr(p, key))
    _check_heads("model.predictor", p.embed_dim, p.num_heads, rope)


def _check_heads(prefix: str, embed_dim: int, num_heads: int, rope: RopeConfig) -> None:
    if embed_dim % num_heads:
        _fail(f"{prefix}.num_heads", num_heads, f"must divide {prefix}.embed_dim={embed_dim}")
    head_dim = embed_dim // num_heads
    if not rope_splits(rope.kind, head_dim):
        need = "head_dim % 4 == 0" if rope.kind == "2d" else "an even head_dim >= 6"
        _fail(f"{prefix}.num_heads", num_heads,
              f"{rope.kind.upper()} RoPE needs {need}, but embed_dim/num_heads = {embed_dim}/{num_heads} = {head_dim}")


def _check_rope_rows(cfg: Config) -> None:
    collision = rope_row_collision(cfg)
    if collision is not None:
        _fail(*collision)


# ----------------------------------------------------------------------------- masks and hierarchy

def _check_mask(cfg: Config) -> None:
    mk = cfg.mask
    _one_of("mask.kind", mk.kind, ("multiblock2d", "multiblock3d", "tube"))
    if not mk.targets and mk.kind != "tube":
        _fail("mask.targets", mk.targets, "needs at least one block kind")
    for i, b in enumerate(mk.targets):
        _positive(f"mask.targets[{i}].num_blocks", b.num_blocks)
        _range_pair(f"mask.targets[{i}].spatial_scale", b.spatial_scale, 0.0, 1.0)
        _range_pair(f"mask.targets[{i}].temporal_scale", b.temporal_scale, 0.0, 1.0)
        _range_pair(f"mask.targets[{i}].aspect_ratio", b.aspect_ratio, 0.0, float("inf"))
    _range_pair("mask.context_scale", mk.context_scale, 0.0, 1.0)
    _range_pair("mask.context_aspect_ratio", mk.context_aspect_ratio, 0.0, float("inf"))
    if not 0 < mk.tube_ratio < 1:
        _fail("mask.tube_ratio", mk.tube_ratio, "must lie in (0, 1)")
    _positive("mask.min_keep", mk.min_keep)
    _positive("mask.max_tries", mk.max_tries, allow_zero=True)


def _check_hierarchy(cfg: Config) -> None:
    h = cfg.hierarchy
    _one_of("hierarchy.loss", h.loss, ("l1", "smooth_l1"))
    if not h.levels:
        _fail("hierarchy.levels", h.levels, "needs at least one level")
    depth = encoder_depth(cfg.model)
    for i, lv in enumerate(h.levels):
        if not -depth <= lv.block < depth:
            _fail(f"hierarchy.levels[{i}].block", lv.block,
                  f"the encoder has {depth} blocks: use 0..{depth - 1} or -1..-{depth}")
        _positive(f"hierarchy.levels[{i}].pool", lv.pool)
        _positive(f"hierarchy.levels[{i}].pool_t", lv.pool_t)
        _positive(f"hierarchy.levels[{i}].weight", lv.weight, allow_zero=True)


# ----------------------------------------------------------------------------- data

def _check_data(cfg: Config) -> None:
    d, m = cfg.data, cfg.model
    for i, s in enumerate(d.sources):
        _one_of(f"data.sources[{i}].kind", s.kind, ("image", "video"))
        _positive(f"data.sources[{i}].weight", s.weight)
        if not s.urls:
            _fail(f"data.sources[{i}].urls", s.urls, "give the shard URLs, e.g. /data/train-{000..099}.tar")
    for key in ("batch_size", "samples_per_epoch", "shuffle_buffer", "image_size", "num_frames",
                "frame_step", "clips_per_video", "eval_clips", "eval_views", "error_window"):
        _positive(f"data.{key}", getattr(d, key))
    _positive("data.num_workers", d.num_workers, allow_zero=True)
    if d.target_fps is not None:
        _positive("data.target_fps", d.target_fps)
    _range_pair("data.crop_scale", d.crop_scale, 0.0, 1.0)
    _one_of("data.short_video", d.short_video, ("pad", "skip"))
    _one_of("data.decoder", d.decoder, ("pyav", "torchcodec"))
    if not 0 < d.max_error_fraction <= 1:
        _fail("data.max_error_fraction", d.max_error_fraction, "must lie in (0, 1]")
    if d.image_size % m.patch_size:
        _fail("data.image_size", d.image_size, f"must be a multiple of model.patch_size={m.patch_size}")
    if is_video_model(cfg) and m.backbone == "vit" and d.num_frames % m.tubelet_size:
        _fail("data.num_frames", d.num_frames, f"must be a multiple of model.tubelet_size={m.tubelet_size}")


# ----------------------------------------------------------------------------- training and run

def _check_optim(cfg: Config) -> None:
    o = cfg.optim
    _positive("optim.total_steps", o.total_steps)
    _positive("optim.warmup_steps", o.warmup_steps, allow_zero=True)
    if o.warmup_steps > o.total_steps:
        _fail("optim.warmup_steps", o.warmup_steps, f"must not exceed optim.total_steps={o.total_steps}")
    for key in ("lr", "start_lr", "final_lr", "weight_decay", "final_weight_decay", "grad_clip"):
        _positive(f"optim.{key}", getattr(o, key), allow_zero=True)
    _positive("optim.eps", o.eps)
    _range_pair("optim.betas", o.betas, 0.0, 1.0, lo_open=False)
    if max(o.betas) >= 1.0:
        _fail("optim.betas", o.betas, "each beta must be < 1")
    _positive("optim.loss_spike.window", o.loss_spike.window)
    _positive("optim.loss_spike.k", o.loss_spike.k)


def _check_ema(cfg: Config) -> None:
    for key in ("momentum", "final_momentum"):
        v = getattr(cfg.ema, key)
        if not 0 <= v <= 1:
            _fail(f"ema.{key}", v, "must lie in [0, 1]")


def _check_deepspeed(cfg: Config) -> None:
    ds = cfg.deepspeed
    _one_of("deepspeed.zero_stage", ds.zero_stage, (0, 1, 2, 3))
    _positive("deepspeed.grad_accum_steps", ds.grad_accum_steps)
    _positive("deepspeed.zero3_persistence_threshold", ds.zero3_persistence_threshold, allow_zero=True)
    _positive("deepspeed.bucket_size", ds.bucket_size)


def _check_checkpoint_and_logging(cfg: Config) -> None:
    _positive("checkpoint.every_steps", cfg.checkpoint.every_steps)
    _positive("checkpoint.keep_last", cfg.checkpoint.keep_last)
    if cfg.checkpoint.stop_at_step is not None:
        _positive("checkpoint.stop_at_step", cfg.checkpoint.stop_at_step)
    _positive("logging.every_steps", cfg.logging.every_steps)
    _positive("logging.repr_every_steps", cfg.logging.repr_every_steps)
    if cfg.logging.peak_tflops is not None:
        _positive("logging.peak_tflops", cfg.logging.peak_tflops)


def _check_launch(cfg: Config) -> None:
    la = cfg.launch
    _one_of("launch.cluster", la.cluster, ("slurm", "local", "debug"))
    for key in ("nodes", "tasks_per_node", "cpus_per_task", "mem_gb", "timeout_min", "max_requeues"):
        _positive(f"launch.{key}", getattr(la, key), allow_zero=key == "max_requeues")
    _positive("launch.gpus_per_node", la.gpus_per_node, allow_zero=True)
    _positive("launch.signal_delay_s", la.signal_delay_s, allow_zero=True)
    if la.signal_delay_s >= 60 * la.timeout_min:
        _fail("launch.signal_delay_s", la.signal_delay_s, f"the save-and-requeue signal must come before the "
              f"time limit: give fewer seconds than launch.timeout_min={la.timeout_min} minutes")
    for option in la.slurm_extra:
        if not option or option.startswith("-") or option.startswith("="):
            _fail("launch.slurm_extra", list(la.slurm_extra), "give sbatch options as `name=value` or `name`, "
                  "without dashes, e.g. [exclusive, mail-type=END]")
