"""DeepSpeed's universal checkpoint form: what lets a ZeRO 1-3 checkpoint load on another world size."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from jepa.errors import UserError

UNIVERSAL_SUFFIX = ".universal"


def convert_to_universal(tag_dir: Path, *, workers: int = 4) -> Path:
    """Convert one checkpoint to DeepSpeed's universal form (`<tag>.universal` next to it).

    The universal form loads on any world size. The conversion runs DeepSpeed's ds_to_universal
    in a fresh process and renames its output into place only when it has finished.
    """
    out = tag_dir.with_name(tag_dir.name + UNIVERSAL_SUFFIX)
    if out.is_dir():
        return out
    tmp = tag_dir.with_name(tag_dir.name + UNIVERSAL_SUFFIX + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
           "--output_folder", str(tmp), "--num_extract_workers", str(workers),
           "--num_merge_workers", str(max(1, workers // 2)), "--inject_missing_state"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    # ds_to_universal points a `latest_universal` file at its output folder; ours is `latest`.
    (tag_dir.parent / "latest_universal").unlink(missing_ok=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise UserError(f"converting {tag_dir} to a universal checkpoint failed "
                        f"(`{' '.join(cmd)}` exited with {proc.returncode}):\n{tail}")
    os.replace(tmp, out)
    return out
