"""The grounding heads by name: the one registry that `PngConfig.grounding_head` is checked against and
that `PngForPanopticNarrativeGrounding` builds its head from.

A head is an `nn.Module` built as `Head(config)` (it reads its hyper-parameters from the `PngConfig`)
whose `forward(features, phrase_features, phrase_mask)` takes the FPN maps (stride -> B x C x H/s x W/s),
the pooled phrases (B x P x C_text) and their mask (B x P, True = real phrase) and returns a
`GroundingHeadOutput` (head_output.py). A head whose `reads_token_features` attribute is True (DRMN with
`drmn_queries="noun_token"`, EPNG with `epng_phrase_decoder_reads_tokens`) also receives the keywords `token_features` (B x T x C_text) and
`phrase_token_mask` (B x P x T). Adding a head is adding its module to this folder and one entry
here; the relative import below is also what makes `save_pretrained` copy the module into Hub
repositories for `trust_remote_code`.
"""

from __future__ import annotations

from torch import nn

from .heads_drmn import DrmnHead
from .heads_epng import EpngHead

GROUNDING_HEADS: dict[str, type[nn.Module]] = {"epng": EpngHead, "drmn": DrmnHead}
