"""Split computing: a model cut into an edge head and a cloud tail, the tensor at the cut squeezed
through a bottleneck (codec or learned encoder/decoder), and the planner that picks the cut."""
