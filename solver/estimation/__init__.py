"""Monte Carlo estimates of cell measures, facet weights and mass centres.

Three implementations of one pass: on the host, fused on a GPU, over torch.distributed ranks.
"""
