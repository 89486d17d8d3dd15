"""The LLM layer: one client for every stage that asks a model (judge, teacher).

litellm fetches a model price map from the internet at import unless told not to; the
pipeline is offline by default, so the bundled map is used unless you export
LITELLM_LOCAL_MODEL_COST_MAP=False.
"""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
