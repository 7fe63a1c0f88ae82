"""darknet_py: darknet's .cfg and .weights, first-class in PyTorch."""
from .cfg import Cfg, Section, parse_cfg, write_cfg
from .errors import (CfgError, ConvertError, DarknetError, DataError, InputError, UnsupportedLayerError,
                     WeightsError)
from .model import Darknet
from .detect import detect
from .train import Trainer

__all__ = ["Darknet", "DarknetError", "CfgError", "WeightsError", "ConvertError", "DataError",
           "InputError", "UnsupportedLayerError", "Cfg", "Section", "parse_cfg", "write_cfg", "Trainer"]
__version__ = "0.1.0"
