"""The L2 Distributor's data path, independent of how it is driven.

``maglev`` builds the consistent-hash table that spreads new flows over a VIP's amphorae,
``nft`` renders that table, the flow pinning and the policy routing as kernel configuration
(an ``nft -f`` script and ``ip -batch`` lines), and ``probes`` tells which amphorae answer.
The distributor agent (``cohort.agents.distributor``) owns the state and applies the result;
no packet of VIP traffic ever passes through Python.
"""
