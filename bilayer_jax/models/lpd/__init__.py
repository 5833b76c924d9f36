"""Networks of the latent-pose-descriptor model (LPD, Burkov et al. CVPR 2020); see docs/lpd.md."""
