"""The optional compiled fast paths: the Bitcoin block scan, the TRON contract reading and the address
book's key tables (everything else is in pyproject.toml).

`depositwatch.chains._btcscan` needs a C compiler, the Python headers and OpenSSL's libcrypto with its
headers (Debian: libssl-dev). Where it cannot be built the install goes on without it and
`btc_scan.scan_block` runs its pure-Python path, which is the reference either way.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "depositwatch.chains._btcscan",
            ["src/depositwatch/chains/_btcscan.c"],
            libraries=["crypto"],
            optional=True,
        ),
        Extension(  # the same, for the TRON contract reading (tron_wire.canonical_fields)
            "depositwatch.chains._tronscan",
            ["src/depositwatch/chains/_tronscan.c"],
            libraries=["crypto"],
            optional=True,
        ),
        Extension(  # the address book's compact key tables (keytable.py); no library needed
            "depositwatch._keytable",
            ["src/depositwatch/_keytable.c"],
            optional=True,
        ),
    ]
)
