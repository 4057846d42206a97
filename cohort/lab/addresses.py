"""The lab's address book: which owner holds which address on each lab network.

The only code that writes the ``addresses`` section of the lab state. Owners are strings that
say who holds an address (``member:web1``, ``port:<id>``, ``vip:<lb id>``, ``instance:<ns>``,
``gateway``, ``host``); reserving is idempotent per owner, so a retried call after a crash gets
the same address back. The book lives inside the lab state file, whose lock (see
``cohort.lab.state``) makes concurrent ``cohort`` processes hand out every address once.
"""

from __future__ import annotations

from typing import Any

from cohort.netplan import AddressError, check_address, pick_address


class AddressBook:
    def __init__(self, state: dict[str, Any]) -> None:
        self._tables: dict[str, dict[str, str]] = state.setdefault("addresses", {})

    def _table(self, network: str) -> dict[str, str]:
        return self._tables.setdefault(network, {})

    def reserve(self, network: str, cidr: str, owner: str, *, first: int, last: int = 254,
                address: str | None = None) -> str:
        """Reserve ``address`` (or the lowest free one in ``.first``-``.last``) of ``network`` for ``owner``."""
        table = self._table(network)
        if address is not None:
            address = check_address(cidr, address)
            holder = table.get(address)
            if holder not in (None, owner):
                raise AddressError(f"{address} is already in use")
            table[address] = owner
            return address
        mine = sorted(a for a, o in table.items() if o == owner)
        if mine:
            return mine[0]
        address = pick_address(cidr, set(table), first, last)
        table[address] = owner
        return address

    def release(self, network: str, owner: str) -> None:
        table = self._table(network)
        for address in [a for a, o in table.items() if o == owner]:
            del table[address]

    def holder(self, network: str, address: str) -> str | None:
        return self._table(network).get(address)

    def held_by(self, network: str, owner: str) -> list[str]:
        return sorted(a for a, o in self._table(network).items() if o == owner)
