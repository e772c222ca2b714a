"""``ablates``: zeroing the features S in the SAE's reconstruction, spliced in at the
read-out hook, raises the loss on the given texts.

Per text: d = mean next-token loss with x_hat(S zeroed) spliced in - the same with x_hat
spliced in, where x_hat = decode(encode(x)); the effect is the mean of d over texts (nats).
The claim holds on a condition if effect / reference effect >= ``min_ratio``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from pytest_qdm.claims.base import Claim, ClaimContext
from pytest_qdm.claims.steers import judge_paired_effect


class Ablates(Claim):
    kind: ClassVar[str] = "ablates"
    features: list[int]
    texts: list[str]
    min_ratio: float = 0.5

    def feature_ids(self) -> list[int]:
        return list(self.features)

    def text_sets(self) -> dict[str, list[str]]:
        return {"texts": self.texts}

    def measure(self, ctx: ClaimContext, model) -> np.ndarray:
        """Per text: the ablated minus the spliced mean next-token loss (nats)."""
        import torch

        sae, features = ctx.sae, list(self.features)
        device = ctx.device_of(model)

        def splice(zeroed: bool):
            def hook_fn(activation, hook):  # noqa: ARG001
                flat = activation.reshape(*activation.shape[:2], -1)
                codes = sae.encode(flat.to(sae.W_dec.dtype))
                if zeroed:
                    codes[..., features] = 0
                return sae.decode(codes).to(activation.dtype).reshape(activation.shape)

            return hook_fn

        effects = []
        with torch.inference_mode():
            for text in self.texts:
                tokens = ctx.tokens(text).to(device)
                losses = [
                    model.run_with_hooks(
                        tokens, fwd_hooks=[(ctx.hook, splice(zeroed))], return_type="loss"
                    )
                    for zeroed in (True, False)
                ]
                effects.append(float(losses[0] - losses[1]))
        return np.array(effects)

    def judge(self, ctx, reference, compressed, condition):
        return judge_paired_effect(self, reference, compressed, condition, "ablation effect")
