"""What UDP and SCTP pools may ask of an ACTIVE_ACTIVE cluster, whose amphorae each keep their own state.

The distributor (L2) or the routers (L3) spread UDP flows and SCTP associations over the amphorae,
and each amphora's kernel picks the member. A SOURCE_IP session persistence table lives in each
amphora's kernel, not shared (unlike HAProxy's stick tables, which the cluster's amphorae share as
peers): it keeps a client on one member only if every flow of that client reaches the same
amphora, which only the L2 distributor with SOURCE_IP affinity does. Elsewhere (SOURCE_IP_PORT
affinity, L3 ECMP hashing ports) such persistence would be a promise the cluster cannot keep, so
it is refused with a 400.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from cohort.api.errors import InvalidInput
from cohort.db import models as m

L4_PROTOCOLS = frozenset({"UDP", "SCTP"})


def _flavor_data(session: Session, flavor_id: str | None) -> dict[str, Any]:
    flavor = session.get(m.Flavor, flavor_id) if flavor_id else None
    profile = session.get(m.FlavorProfile, flavor.flavor_profile_id) if flavor else None
    data = json.loads(profile.flavor_data) if profile and profile.flavor_data else {}
    return data if isinstance(data, dict) else {}


def one_amphora_per_client(session: Session, lb: m.LoadBalancer) -> bool:
    """Whether every flow of one client reaches the same amphora of ``lb``."""
    if lb.topology != "ACTIVE_ACTIVE":
        return True
    data = _flavor_data(session, lb.flavor_id)
    return str(data.get("distributor_type", "L2")) == "L2" and \
        str(data.get("distributor_affinity", "SOURCE_IP")) == "SOURCE_IP"


def check_persistence(session: Session, lb: m.LoadBalancer, protocol: str, persistence: Any) -> None:
    """Refuse SOURCE_IP persistence on a UDP or SCTP pool of a cluster that spreads one client's flows."""
    if protocol not in L4_PROTOCOLS or not persistence or persistence.get("type") != "SOURCE_IP":
        return
    if not one_amphora_per_client(session, lb):
        raise InvalidInput(
            f"Invalid input for field/attribute session_persistence. Value: 'SOURCE_IP'. This ACTIVE_ACTIVE "
            f"load balancer spreads one client's {protocol} flows over several amphorae, which keep their "
            "persistence tables apart: only an L2 distributor with SOURCE_IP affinity keeps it.")
