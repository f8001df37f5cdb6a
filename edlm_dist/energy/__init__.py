"""Energies for EDLM's residual model p(x0 | xt) ∝ p_theta(x0 | xt) exp(-E(x0, xt, t)).

An energy is a callable `energy(x0, xt, t, proposal_logp) -> [N]` (float32 or float64, lower
= more likely) as taken by `edlm_dist.diffusion.sample(..., energy=...)`: x0 [N, L] are the
candidate denoisings, xt [N, L] the noisy sequences they came from (holding the mask id of the
denoiser's token space; for the project's runs the vocab size), t [N] the time, and
proposal_logp [N] float64 = log p_theta(x0 | xt) summed over the masked positions of xt. An
attribute `reads_time = False` lets the sampler reuse outputs across steps where xt did not
change.

`AREnergy` uses a pretrained autoregressive model (EDLM-AR and the carry-over variant),
`NCEEnergy` the energy network trained by noise-contrastive estimation (EDLM-NCE).
`edlm_dist.energy.loading.load_energy` builds either from an `[energy]` config section.
"""

from edlm_dist.energy.autoregressive import AREnergy
from edlm_dist.energy.nce import NCEEnergy

Energy = AREnergy | NCEEnergy

__all__ = ["AREnergy", "Energy", "NCEEnergy"]
