"""mec_gym: Gymnasium environments for collaborative LLM fine-tuning at the mobile edge.

Importing the package registers the environment ids (idempotently):

* ``mec_gym/EdgeTraining-v0`` — the ``default`` scenario
* ``mec_gym/EdgeTraining-Liu2024-v0`` — [LZ24]
* ``mec_gym/EdgeTraining-Qian2024-v0`` — [QZ24]
* ``mec_gym/EdgeTraining-CollaPipe-v0`` — [CP25]
"""

from __future__ import annotations

import gymnasium as gym

__version__ = "0.1.0"

ENV_IDS = {
    "mec_gym/EdgeTraining-v0": "default",
    "mec_gym/EdgeTraining-Liu2024-v0": "liu2024",
    "mec_gym/EdgeTraining-Qian2024-v0": "qian2024",
    "mec_gym/EdgeTraining-CollaPipe-v0": "collapipe",
}


def _register() -> None:
    for env_id, scenario in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(id=env_id, entry_point="mec_gym.envs.edge_training:EdgeTrainingEnv",
                     vector_entry_point="mec_gym.envs.vector:EdgeTrainingVectorEnv",
                     kwargs={"scenario": scenario}, disable_env_checker=False)


_register()

from mec_gym.config import SystemConfig  # noqa: E402
from mec_gym.envs.edge_training import EdgeTrainingEnv  # noqa: E402
from mec_gym.model.decision import Decision  # noqa: E402
from mec_gym.scenarios import SCENARIOS, make_config  # noqa: E402

__all__ = ["ENV_IDS", "SCENARIOS", "Decision", "EdgeTrainingEnv", "SystemConfig", "make_config", "__version__"]
