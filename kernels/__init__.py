"""edgecloud.kernels: compute and communication kernels. Imports nothing else of edgecloud."""
