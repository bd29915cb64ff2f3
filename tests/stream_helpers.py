"""Train and eval streams built as a run would build them: clips when a source holds videos."""

from jepa.config import Config
from jepa.data.eval_stream import build_eval_loader
from jepa.data.train_stream import build_train_loader


def has_video(cfg: Config) -> bool:
    return any(s.kind == "video" for s in cfg.data.sources)


def train_loader(cfg: Config, **kw):
    return build_train_loader(cfg, clips=has_video(cfg), **kw)


def eval_loader(urls: str, *, cfg: Config, **kw):
    return build_eval_loader(urls, cfg=cfg, clips=has_video(cfg), **kw)
