"""Lower layers by concern: data (the data path), prepare (building dataset folders), run (one run's
outputs and checkpoints), report (metrics, summaries, plots). None of them imports methods or main."""
