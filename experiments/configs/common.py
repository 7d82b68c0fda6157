"""Defaults shared by every experiment config (imports only ml_collections)."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 256
    c.num_steps = 1000
    c.log_every = 50
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.resume_from_step = -1  # -1: the latest checkpoint; N: resume from step N (later ones moved aside)
    c.debug = False  # named NaN/Inf checks in every step (checkify); slower, for hunting a NaN
    # Method: one section holding every method's fields, so any method is one override away.
    c.method = dict(
        name="gje",
        estimator="batch",  # gje: batch | ema | param
        lambda_geo=1.0,
        eps_rel=1e-4,
        eps_abs=1e-6,
        momentum=0.99,  # EMA of the gje 'ema' statistics (also SMC's kernel and MDN's target variance)
        floor=1e-3,  # minimum Cholesky diagonal of learned densities
        num_components=8,  # gmje prototypes
        objective="joint",  # gmje: joint | conditional
        lambda_bal=0.1,
        tau=0.1,  # simclr temperature
        vicreg_sim=25.0,
        vicreg_var=25.0,
        vicreg_cov=1.0,
        predictor_loss="cosine",  # predictor: mse | cosine
        predictor_hidden=(256,),
        predictor_norm="ln",  # norm of the predictor head's hidden layers: ln | bn (BYOL's) | none
        target_momentum=0.99,  # EMA target network of the predictor baseline
        # gmje_em: online EM prototypes (num_components of them)
        em_momentum=0.9,  # EMA of the sufficient statistics (also GNG's statistics)
        dead_threshold=0.0,  # weight below which a component is re-seeded; 0 = 1 / (10 K)
        # gmje_em, gmje_gng, gmje_mdn: ridge on every component of pooled_eps_rel x the average
        # variance of the mixture (EM, GNG) or of the targets (MDN): a floor on how tight a
        # component may get relative to the embeddings' spread
        pooled_eps_rel=0.0,
        # gmje_em, gmje_gng: the ridge's shape: isotropic (the average variance times I) |
        # covariance (the mixture's total covariance: keeps the views' correlation, so the
        # direction in which aligned views differ stays tight)
        pooled_shape="isotropic",
        # gmje_mdn: conditional mixture density network (num_components outputs)
        mdn_covariance="diag",  # diag | full
        mdn_hidden=(128,),
        # gmje_gng: Growing Neural Gas (Fritzke 1995 defaults)
        gng_capacity=32,
        gng_eps_b=0.2,
        gng_eps_n=0.006,
        gng_max_age=50,
        gng_insert_every=100,
        gng_alpha=0.5,
        gng_decay=0.995,
        gng_covariance="node",  # node | isotropic
        # gmje_smc: SMC memory bank
        bank_size=4096,
        ess_threshold=0.5,  # resample when ESS < ess_threshold * bank_size
        resampling="systematic",  # systematic | stratified | multinomial | residual
        rejuvenation=0.0,  # jitter of resampled particles, in kernel standard deviations
        age_penalty=0.0,  # log-weight lost per step of age
        bank_tempering=1.0,  # reweight by KDE^bank_tempering (tempered SMC; 1 = plain)
        bank_kernel="shared",  # shared (EMA covariance x Silverman) | isotropic
        bank_bandwidth=0.1,  # h of the isotropic kernel
        bank_loss="nll",  # nll | contrastive | both
    )
    c.data = dict(name="clustered", num_examples=8192, dim=32, num_clusters=8, noise=0.1)
    c.model = dict(
        encoder="mlp",  # mlp | convnet_small | resnet18 | resnet50
        hidden=(256, 256),
        feature_dim=64,
        norm="ln",
        widths=(32, 64, 128, 256),
        patch=1,  # convnet_small: space-to-depth stem (2 halves the resolution first)
        stem="cifar",
        width=64,
        projector="none",  # none | bn | ln
        projector_hidden=(256,),
        projector_out_norm=False,  # affine-free batch-norm on the embeddings (fixes their scale)
        embed_dim=16,
        dtype="float32",  # or bfloat16 for encoder compute
    )
    c.optim = dict(
        name="adamw", lr=1e-3, weight_decay=1e-4, warmup_steps=50, schedule="cosine", grad_clip=1.0, momentum=0.9
    )
    c.distributed = dict(coordinator_address="", num_processes=0, process_id=-1)
    return c


def clustered_views_train(runlocal: bool = False) -> ml_collections.ConfigDict:
    """The training section shared by the trap and sampling experiments: clustered points
    (32-D, 8 clusters) seen through two noisy views, one MLP encoder to 16-D embeddings.
    runlocal shrinks it to a seconds-long run."""
    t = base_config()
    t.batch_size = 256
    t.data.dim = 32
    t.model.hidden = (128,)
    t.model.feature_dim = 32
    t.model.embed_dim = 16
    t.method.num_components = 8
    t.method.gng_capacity = 16
    t.method.gng_insert_every = 50
    t.method.mdn_hidden = (64,)
    if runlocal:
        t.num_steps = 10
        t.batch_size = 64
        t.data.num_examples = 512
        t.data.dim = 8
        t.model.hidden = (16,)
        t.model.feature_dim = 8
        t.model.embed_dim = 4
        t.method.num_components = 3
        t.method.bank_size = 128
        t.method.gng_capacity = 6
        t.method.gng_insert_every = 10
        t.method.mdn_hidden = (8,)
    return t
