"""Cells of the power diagram: the FAISS cell index, the fused Triton backend, exact 2D geometry."""
