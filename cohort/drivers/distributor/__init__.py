"""Distributor seam: spreads a VIP's flows over the amphorae of its cluster."""
