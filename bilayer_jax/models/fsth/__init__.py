"""The few-shot talking-head model (FSTH, Zakharov et al. ICCV 2019) as its reference implementation builds it:
`config.FSTHConfig`, `blocks`, and the embedder, generator and discriminator in `networks` (docs/fsth.md)."""
