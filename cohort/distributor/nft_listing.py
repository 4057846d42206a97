"""Reading a distributor's nftables table in a child process, so the agent never parses it itself.

Under load a VIP's flow maps hold hundreds of thousands of pins; ``nft -j`` lists them as one
JSON document whose parsing holds the interpreter for seconds. In the agent that stopped its
heartbeats, and the controllers replaced a healthy distributor (in the chaos benchmark, both of a
pair once). ``python -m cohort.distributor.nft_listing ARGS...`` runs ``nft -j ARGS``, reduces it
with ``nft.parse_table`` and prints only the counters and the flow counts per mark.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from cohort.distributor import nft


def encode(counters: dict[str, nft.VipCounters]) -> str:
    return json.dumps({key: dataclasses.asdict(c) for key, c in counters.items()}, separators=(",", ":"))


def decode(text: str) -> dict[str, nft.VipCounters]:
    """The child's answer; JSON made the marks strings, they are numbers again."""
    data = json.loads(text)
    return {str(key): nft.VipCounters(packets=int(c["packets"]), bytes=int(c["bytes"]),
                                      connections=int(c["connections"]),
                                      flows={int(mark): int(n) for mark, n in c["flows"].items()})
            for key, c in data.items()}


def main(argv: list[str]) -> int:
    listing = subprocess.run(["nft", "-j", *argv], capture_output=True, text=True, check=False)
    if listing.returncode != 0:
        sys.stderr.write(listing.stderr or listing.stdout)
        return listing.returncode
    sys.stdout.write(encode(nft.parse_table(json.loads(listing.stdout))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
