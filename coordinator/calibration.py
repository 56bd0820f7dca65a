"""Features for calibrating a policy's threshold to a target cloud share.

The edge model reads held-apart calibration text (standard-library files of the
``calibration`` split, never the evaluation prompts) teacher-forced; ``policy.calibrate``
then picks the score quantile that flags the target share of those tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from edgecloud.coordinator.features import TokenFeatures, uncertainty
from edgecloud.corpus import stdlib_files
from edgecloud.models.llama import LlamaModel


def calibration_texts(max_files: int = 8, max_chars: int = 3000) -> list[str]:
    """The first characters of a few files of the calibration split."""
    return [path.read_text(errors="replace")[:max_chars] for path in stdlib_files("calibration")[:max_files]]


@torch.inference_mode()
def teacher_forced_features(model: LlamaModel, token_ids: Sequence[int], *,
                            with_hidden: bool = False) -> list[TokenFeatures]:
    """Features of the model's next-token distribution at every position of ``token_ids``."""
    ids = torch.tensor([list(token_ids)], device=model.device)
    hidden = model.forward_layers(model.embed(ids), 0, model.config.num_layers)  # (1, T, C)
    logits = model.head(hidden)[0]  # (T, V)
    normed = model.norm(hidden)[0].float() if with_hidden else None
    entropy, max_prob, margin = uncertainty(logits)
    return [TokenFeatures(float(entropy[i]), float(max_prob[i]), float(margin[i]), i,
                          None if normed is None else normed[i]) for i in range(len(token_ids))]

