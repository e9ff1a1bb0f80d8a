"""Controllers: change the params in force while a run goes on, from what training reports.

The training loop hands a controller each step's per-domain signals (:class:`DomainSignals`:
token losses and token counts, summed over ranks); the controller may answer with new params,
which the loop puts in force from the next step on every rank and worker
(:func:`quadmix_stream.loaders.stateful.switch_params`). A controller's ``state_dict`` goes into
every checkpoint, so a resumed run makes the same decisions at the same steps.

Controllers by name (``build_controller``): ``schedule`` (params in force from given steps, an
anneal for example) and ``odm`` (Online Data Mixing, an EXP3 bandit over domains rewarded by
their training loss, mapped onto QuaDMix's per-domain η and ε).
"""

from quadmix_stream.control.base import Controller, DomainSignals
from quadmix_stream.control.odm import ODMConfig, ODMController
from quadmix_stream.control.registry import build_controller, controller_config
from quadmix_stream.control.schedule import ScheduleController

__all__ = [
    "Controller",
    "DomainSignals",
    "ODMConfig",
    "ODMController",
    "ScheduleController",
    "build_controller",
    "controller_config",
]
