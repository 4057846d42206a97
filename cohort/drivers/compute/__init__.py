"""Compute seam: where an amphora or distributor runs."""
