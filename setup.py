"""The optional compiled fast path of the Bitcoin block scan (everything else is in pyproject.toml).

`depositwatch.chains._btcscan` needs a C compiler, the Python headers and OpenSSL's libcrypto with its
headers (Debian: libssl-dev). Where it cannot be built the install goes on without it and
`btc_wire.scan_block` runs its pure-Python path, which is the reference either way.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "depositwatch.chains._btcscan",
            ["src/depositwatch/chains/_btcscan.c"],
            libraries=["crypto"],
            optional=True,
        )
    ]
)
