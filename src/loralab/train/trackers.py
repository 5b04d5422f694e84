"""Experiment trackers for ``--report-to``: TensorBoard, Weights & Biases, MLflow — each through its own
library's writer, as a training callback. The run's metrics.jsonl is written either way."""

from __future__ import annotations

from loralab.errors import ConfigError
from loralab.train.callbacks import Callback

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


class Tracker(Callback):
    """Logs training loss and learning rate, validation and test metrics, on the main process only."""

    def on_train_begin(self, trainer) -> None:
        if trainer.main:
            self.open(trainer)

    def on_step(self, trainer, loss: float) -> None:
        if trainer.main and trainer.state.step % trainer.cfg.log_every == 0:
            self.log({"train/loss": loss, "train/lr": trainer.scheduler.get_last_lr()[0]}, trainer.state.step)

    def on_eval(self, trainer, record: dict) -> None:
        if trainer.main:
            self.log({f"validation/{k}": v for k, v in record.items() if isinstance(v, (int, float))
                      and k not in ("step", "epoch")}, trainer.state.step)

    def on_train_end(self, trainer, result) -> None:
        if trainer.main:
            self.log({f"test/{k}": v for k, v in result.test.items() if isinstance(v, (int, float))},
                     trainer.state.step)
            self.close()

    def open(self, trainer) -> None:
        raise NotImplementedError

    def log(self, values: dict, step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TensorBoard(Tracker):
    """Event files under <out>/tensorboard (``tensorboard --logdir <out>``)."""

    def open(self, trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(trainer.rundir.path / "tensorboard"))
        self.writer.add_text("config", f"```\n{trainer.cfg.to_dict()}\n```")

    def log(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class Wandb(Tracker):
    def open(self, trainer) -> None:
        import wandb

        self.run = wandb.init(name=trainer.rundir.path.name, dir=str(trainer.rundir.path), config=trainer.cfg.to_dict())

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class Mlflow(Tracker):
    def open(self, trainer) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.start_run(run_name=trainer.rundir.path.name)
        mlflow.log_params(trainer.cfg.flat())

    def log(self, values: dict, step: int) -> None:
        self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


TRACKERS = {"tensorboard": TensorBoard, "wandb": Wandb, "mlflow": Mlflow}


def trackers_for(names: list[str]) -> list[Tracker]:
    """One tracker per name; a missing package is named with the command that installs it."""
    import importlib.util

    made = []
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError("{} " + name + f" needs the {PACKAGES[name]} package: pip install {PACKAGES[name]}.",
                              ("report_to",))
        made.append(TRACKERS[name]())
    return made
