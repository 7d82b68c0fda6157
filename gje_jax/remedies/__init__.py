"""The stateful remedies of the Mahalanobis Trace Trap (METHOD sections 4, 6, 7): mixtures
whose parameters are not fitted by gradients but carried as non-gradient state.

They share one protocol, which is what the method modules (gje_jax.methods.gmje_em,
gmje_gng, gmje_smc) wrap:

- a state pytree with static shapes, made empty by a classmethod
  (`em.EMState.create`, `gng.GNGState.create`, `smc.ParticleBank.empty`), initialised
  from the first batch it sees;
- `update(state, z [N, D], ...) -> (state, metrics)`: a pure, jit-safe step on
  stop-gradient joint embeddings of the global batch;
- a read-out of the density the state defines (`EMState.mixture`, `gng.mixture`, the
  kernel densities of `smc`).

`resampling` holds the particle resampling schemes the SMC bank uses; `reseed` where a
dead mixture component goes and the weight it enters with (EM and the SGD prototypes).
"""

from gje_jax.remedies import resampling  # noqa: I001 (smc imports it)
from gje_jax.remedies import em, gng, reseed, smc

__all__ = ["em", "gng", "resampling", "reseed", "smc"]
