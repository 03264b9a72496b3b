"""The Method's state as data: model and head, optimizer, scheduler, memory, classes, each method's extras."""
from __future__ import annotations


class StateAsData:
    """``state_dict`` / ``load_state_dict`` of methods.base.Method (a checkpoint after each task)."""

    def state_dict(self) -> dict:
        """The method's state after a task, as data: model (with its head's size and kind), optimizer,
        scheduler, memory, exposed classes and each method's extras (``extra_state``)."""
        return {"model": self.model.state_dict(), "head": self.head, "n_out": self.n_out,
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "memory": self.memory.state_dict(), "exposed": sorted(self.exposed),
                "num_learning_class": self.num_learning_class, "samples": dict(self.samples),
                "training": self.model.training, "extra": self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        """Rebuild the model to the saved head, then load every part (tensors moved to the device)."""
        if state["head"] == "initial":
            self.model = self.new_model(state["n_out"])
        else:
            self.replace_head(state["n_out"])
        self.model.load_state_dict(state["model"])
        self.model.train(state.get("training", True))
        self.exposed = set(state["exposed"])
        self.num_learning_class = state["num_learning_class"]
        self.samples = dict(state["samples"])
        self.memory.load_state_dict(state["memory"])
        self.load_extra_state(state["extra"])
        if state["optimizer"] is not None:
            self.build_optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])

    def extra_state(self) -> dict:
        """What a method keeps across tasks beyond the base state (tensors, numbers, lists, dicts)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass
