"""Build of the compiled modules (metadata lives in pyproject.toml).

- ``solver.cells._simd``, the CPU search kernel;
- ``solver.cells._laguerre``, the exact power cells of 2D and 3D diagrams.

``optional=True``: without a C compiler the install still succeeds; the cell index falls back to
FAISS (``solver.cells.index.available_backends`` then omits ``simd``) and the exact diagram to
its numpy path (``solver.cells.power_diagram``).

``-fno-wrapv``: CPython's build flags (which setuptools passes first) include ``-fwrapv``, which
defines signed overflow and so stops the compiler from turning the kernel's ``int`` index
arithmetic into pointer increments; the search ran 1.5 to 1.7x slower with it
(docs/benchmarks.md, cell-query throughput). The kernel never relies on wrap-around, and the
last of the two flags wins.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "solver.cells._simd",
            ["solver/cells/_simd.c"],
            extra_compile_args=["-O3", "-std=c11", "-fno-wrapv"],
            optional=True,
        ),
        Extension(
            "solver.cells._laguerre",
            ["solver/cells/_laguerre.c"],
            extra_compile_args=["-O3", "-std=c11", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
    ]
)
