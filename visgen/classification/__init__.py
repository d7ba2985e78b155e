"""Classification from generative models: diffusion classifiers p(y | x) by
Bayes' rule, and noise-aware classifiers for classifier guidance."""
