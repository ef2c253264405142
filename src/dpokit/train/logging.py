"""Run-directory metric logging: ``metrics.jsonl`` always; TensorBoard, W&B and MLflow through
``train.report_to``, under TRL's metric names (the map is ``tracker_key``; see docs/tracking.md)."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, Iterable, List, Optional

from ..io import read_jsonl

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
    """The records of a run's ``metrics.jsonl`` (:func:`dpokit.io.read_jsonl`: one torn-line rule)."""
    return read_jsonl(path)


# ---- experiment trackers (train.report_to) ---------------------------------------------------
# name in train.report_to: (modules of which one must be importable, pip extra of dpokit)
TRACKERS = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),  # mlflow or mlflow-skinny
}
# The config's default: TensorBoard when it is installed (a plain install has no tracker packages).
DEFAULT_REPORT_TO = ("tensorboard",)

# metrics.jsonl name -> the name TRL's DPOTrainer (through transformers' Trainer) gives the same quantity
RENAMES = {"lr": "learning_rate", "tokens": "num_tokens"}
NOT_LOGGED = ("step",)            # the x-axis, passed as the tracker's step


def tracker_key(key: str, style: str = "prefixed") -> str:
    """The name a tracker shows for a ``metrics.jsonl`` key, as transformers/TRL name it there.

    ``prefixed`` (TensorBoard, W&B; transformers' ``rewrite_logs``): ``train/<name>`` for step
    metrics (``lr`` -> ``train/learning_rate``), ``eval/<name>`` unchanged. ``flat`` (MLflow, as
    transformers' MLflow callback): ``<name>`` (``lr`` -> ``learning_rate``), ``eval/<name>`` ->
    ``eval_<name>``. ``monitor/*`` is kept in both."""
    if key.startswith("monitor/"):
        return key
    if key.startswith("eval/"):
        return key if style == "prefixed" else "eval_" + key[len("eval/"):]
    name = RENAMES.get(key, key)
    return "train/" + name if style == "prefixed" else name


def tracker_values(record: Dict[str, Any], style: str = "prefixed") -> Dict[str, float]:
    """The numeric values of a record under their tracker names (``step`` is the x-axis, not a value)."""
    values = {}
    for key, value in record.items():
        value = value.item() if hasattr(value, "item") else value
        if key in NOT_LOGGED or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        values[tracker_key(key, style)] = value
    return values


def _installed(modules: Iterable[str]) -> bool:
    import importlib.util
    import sys

    for module in modules:
        if module in sys.modules:  # imported already (or blocked: None)
            if sys.modules[module] is not None:
                return True
            continue
        try:
            if importlib.util.find_spec(module) is not None:
                return True
        except (ImportError, ValueError):
            pass
    return False


def available_trackers(requested: Iterable[str], logging_dir: Optional[str] = None) -> List[Any]:
    """The trackers of ``train.report_to``, as accelerate trackers writing under the run directory.

    A tracker that is named but not installed is an error naming the pip extra; only the default
    (``[tensorboard]``) falls back to no tracker, with a warning. ``all``: every installed tracker;
    ``none`` (or an empty list): none. ``logging_dir`` is the run directory; without it, each tracker
    takes ``train.output_dir`` from the run configuration the trainer stores at ``init_trackers``."""
    from ..config import ConfigError

    requested = [requested] if isinstance(requested, str) else list(requested or [])
    names: List[str] = []
    for name in requested:
        if not isinstance(name, str) or (name not in TRACKERS and name not in ("all", "none")):
            raise ConfigError(f"train.report_to: unknown tracker {name!r}; choose from {sorted(TRACKERS)}, "
                              "'all' (those installed) or 'none'")
        if name == "all":
            names += [n for n, (modules, _) in TRACKERS.items() if _installed(modules)]
        elif name != "none":
            modules, extra = TRACKERS[name]
            if _installed(modules):
                names.append(name)
            elif tuple(requested) == DEFAULT_REPORT_TO:
                logger.warning("train.report_to: %s (the default) is not installed, so this run logs to "
                               "metrics.jsonl only (pip install 'dpokit[%s]', or set train.report_to: [] to "
                               "silence this)", name, extra)
            else:
                raise ConfigError(f"train.report_to: {name!r} is requested but the {modules[0]!r} package is not "
                                  f"installed; install it with pip install 'dpokit[{extra}]', or remove {name!r} "
                                  "from train.report_to")
    if not names:
        return []
    classes = _tracker_classes()
    return [classes[name](logging_dir) for name in dict.fromkeys(names)]


def _tracker_classes() -> Dict[str, type]:
    """accelerate tracker classes that log under TRL's names into the run directory (built on first use,
    so reading metrics does not import accelerate)."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _build_tracker_classes()
    return _CLASSES


_CLASSES: Optional[Dict[str, type]] = None


def _build_tracker_classes() -> Dict[str, type]:
    from accelerate.tracking import GeneralTracker, on_main_process

    class RunTracker(GeneralTracker):
        """Opens lazily: at ``store_init_configuration`` (which carries ``train.output_dir``) or at
        the first ``log``, whose step TensorBoard needs to drop what a killed run logged past the
        checkpoint being resumed."""

        requires_logging_directory = False
        main_process_only = True
        style = "prefixed"
        open_early = True

        def __init__(self, logging_dir: Optional[str] = None):
            super().__init__()
            self.run_dir = logging_dir
            self.config: Dict[str, Any] = {}
            self.opened = False

        @property
        def tracker(self):
            return getattr(self, "handle", None)

        @on_main_process
        def start(self):
            pass

        @on_main_process
        def store_init_configuration(self, values: dict):
            self.config = dict(values)
            if self.run_dir is None:
                self.run_dir = values.get("train.output_dir")
            if self.open_early:  # a store that cannot be reached fails before the first step
                self._open(None)

        @on_main_process
        def log(self, values: dict, step: Optional[int] = None, **kwargs):
            self._open(step)
            self.write(tracker_values(values, self.style), step, **kwargs)

        def _open(self, step):
            if not self.opened:
                self.run_dir = os.path.abspath(self.run_dir or os.getcwd())
                self.open(step)
                self.opened = True

        @on_main_process
        def finish(self):
            if self.opened:
                self.close()
                self.opened = False

        @property
        def run_name(self) -> str:
            return os.path.basename(os.path.normpath(self.run_dir)) or "dpokit"

    class TensorBoardTracker(RunTracker):
        """``<run>/tensorboard/``; a resumed run starts its event file with ``purge_step`` = its
        first step, so TensorBoard drops the events a killed run wrote after the checkpoint."""

        name = "tensorboard"
        open_early = False

        def open(self, step):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboardX only
                from tensorboardX import SummaryWriter
            self.logdir = os.path.join(self.run_dir, "tensorboard")
            self.handle = SummaryWriter(self.logdir, purge_step=step)
            if self.config:
                self.handle.add_hparams(self.config, {}, run_name="hparams")

        def write(self, values, step, **kwargs):
            for key, value in values.items():
                self.handle.add_scalar(key, value, global_step=step, **kwargs)
            self.handle.flush()

        def close(self):
            self.handle.close()

    class WandBTracker(RunTracker):
        """Project ``$WANDB_PROJECT`` (default ``dpokit``), run name the run directory's name, files
        under ``$WANDB_DIR`` (default: the run directory)."""

        name = "wandb"

        def open(self, step):
            import wandb

            self.handle = wandb.init(project=os.environ.get("WANDB_PROJECT", "dpokit"), name=self.run_name,
                                     dir=os.environ.get("WANDB_DIR") or self.run_dir, config=self.config)

        def write(self, values, step, **kwargs):
            self.handle.log(values, step=step, **kwargs)

        def close(self):
            self.handle.finish()

    class MLflowTracker(RunTracker):
        """Experiment ``$MLFLOW_EXPERIMENT_NAME`` (default ``dpokit``) at MLflow's tracking URI
        (``$MLFLOW_TRACKING_URI``); run name the run directory's name."""

        name = "mlflow"
        style = "flat"

        def open(self, step):
            import mlflow

            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "dpokit"))
            self.handle = mlflow.start_run(run_name=self.run_name, nested=mlflow.active_run() is not None)
            limits = mlflow.utils.validation
            items = [(k, v) for k, v in self.config.items() if len(str(v)) <= limits.MAX_PARAM_VAL_LENGTH]
            for i in range(0, len(items), limits.MAX_PARAMS_TAGS_PER_BATCH):
                mlflow.log_params(dict(items[i:i + limits.MAX_PARAMS_TAGS_PER_BATCH]))

        def write(self, values, step, **kwargs):
            import mlflow

            mlflow.log_metrics(values, step=step, **kwargs)

        def close(self):
            import mlflow

            mlflow.end_run()

    return {"tensorboard": TensorBoardTracker, "wandb": WandBTracker, "mlflow": MLflowTracker}


def format_metrics(record: Dict[str, Any], keys: Optional[Iterable[str]] = None) -> str:
    keys = keys or ("loss", "rewards/accuracies", "rewards/margins", "grad_norm", "lr")
    parts = []
    for key in keys:
        if key in record:
            value = to_python(record[key])
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)
