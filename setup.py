"""Build of the one compiled module, the CPU search kernel (metadata lives in pyproject.toml).

``optional=True``: without a C compiler the install still succeeds and the cell index falls
back to FAISS (``solver.cells.index.available_backends`` then omits ``simd``).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "solver.cells._simd",
            ["solver/cells/_simd.c"],
            extra_compile_args=["-O3", "-std=c11"],
            optional=True,
        )
    ]
)
