"""Records to conclusions, with numpy and scipy only (no jax, no rendering): a pool's curves as
arrays (`curves`), standard errors, ties and the set that cannot be told from the best (`noise`),
tie-aware rank correlations (`rank_stats`), regret, bootstrap intervals and the little lag
(`correlation`), predictors of the final loss (`predictors`), successive halving (`halving`) and
every predictor compared with halving replayed (`comparison`). The public functions are re-exported here."""

from laggrow.analysis.comparison import compare_predictors, full_correlation, replay_halving  # noqa: F401
from laggrow.analysis.correlation import (  # noqa: F401
    CorrelationResult,
    StabilityResult,
    correlate,
    little_lag,
    ranking_stability,
)
from laggrow.analysis.curves import (  # noqa: F401
    Candidate,
    Curves,
    has_finals,
    load_curves,
    resolve_final_step,
    steps_with_loss,
)
from laggrow.analysis.rank_stats import (  # noqa: F401
    batch_kendall,
    batch_pearson,
    batch_spearman,
    rank_correlations,
)
