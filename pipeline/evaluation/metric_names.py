"""The eval job's metric names, apart from the metric code: `--help` lists them without importing torch."""

ALL_METRICS = ("l1", "ssim", "lpips", "clip_i", "clip_t", "dino")
