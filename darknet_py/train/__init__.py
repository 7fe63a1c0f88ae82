"""Training the darknet way: darknet's schedule, backward and SGD update."""
from .darknet_grad import MODES, DarknetBatchNorm, darknet_bn, head_backward, install
from .schedule import POLICIES, LRSchedule, get_lr
from .trainer import PassResult, StepResult, Trainer, split_pass
from .update import darknet_update_

__all__ = ["Trainer", "StepResult", "PassResult", "split_pass", "get_lr", "LRSchedule", "POLICIES",
           "darknet_update_", "darknet_bn", "DarknetBatchNorm", "head_backward", "install", "MODES"]
