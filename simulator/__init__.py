"""edgecloud.simulator: link model, shaping proxy, experiment runner, discrete-event fleet mode."""
