"""Cells of the power diagram: the cell index (CPU kernel, FAISS, Triton), exact 2D geometry."""
