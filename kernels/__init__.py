"""W4A16 kernels, installed as ``edge_awq.kernels``: the torch reference beside the fast paths."""
