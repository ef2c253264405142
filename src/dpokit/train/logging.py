"""Run-directory metric logging: ``metrics.jsonl`` always, TensorBoard/W&B/MLflow when installed."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, Iterable, List, Optional

logger = logging.getLogger("dpokit")


def to_python(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Appends one JSON object per logged step to ``metrics.jsonl`` (only on the main process)."""

    def __init__(self, path: str, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the file has no duplicate steps."""
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = []
        with open(self.path, "rb") as handle:
            for raw in handle:
                try:  # a line torn by a crash (or a full disk) mid-write is dropped, not fatal
                    record = json.loads(raw.decode("utf-8"))
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("step", 0), (int, float)) \
                        and record.get("step", 0) <= step:
                    kept.append(raw.decode("utf-8").rstrip("\n") + "\n")
        tmp = self.path + ".tmp"
        with open(tmp, "w") as handle:
            handle.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps({k: to_python(v) for k, v in record.items()}) + "\n")


def read_metrics(path: str) -> List[Dict[str, Any]]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def available_trackers(requested: Iterable[str]) -> List[str]:
    """Keep the trackers whose packages are installed; warn about the others (they are optional)."""
    import importlib.util

    modules = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
    found = []
    for name in requested:
        if name not in modules:
            raise ValueError(f"train.report_to: unknown tracker {name!r}; choose from {sorted(modules)}")
        if importlib.util.find_spec(modules[name]) is None:
            logger.warning("train.report_to includes %s but it is not installed; skipping it", name)
        else:
            found.append(name)
    return found


def format_metrics(record: Dict[str, Any], keys: Optional[Iterable[str]] = None) -> str:
    keys = keys or ("loss", "rewards/accuracies", "rewards/margins", "grad_norm", "lr")
    parts = []
    for key in keys:
        if key in record:
            value = to_python(record[key])
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)
