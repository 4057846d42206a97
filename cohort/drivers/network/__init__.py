"""Network seam: subnets, VIP ports and the plugging of amphorae into them."""
