"""Which load balancers use a BGP speaker, so that a speaker or peer in use is not deleted (409)
and a change to one reaches every amphora that uses it.

A load balancer uses a speaker when it is an ACTIVE_ACTIVE L3_BGP cluster whose flavor names the
speaker, or names none while the speaker is the configured default. A flavor profile that names
the speaker uses it too: deleting the speaker would leave the flavor unusable.
"""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from cohort.api.errors import Conflict
from cohort.api.guards import lock_load_balancer
from cohort.db import models as m


def _speaker_of(flavor_data: str | None, default_id: str) -> str | None:
    try:
        data = json.loads(flavor_data) if flavor_data else {}
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("distributor_type") != "L3_BGP":
        return None
    return str(data.get("bgp_speaker_id") or default_id or "") or None


def load_balancers_using(session: Session, speaker_id: str, default_id: str) -> list[str]:
    rows = session.execute(
        select(m.LoadBalancer.id, m.FlavorProfile.flavor_data)
        .join(m.AmphoraCluster, m.AmphoraCluster.load_balancer_id == m.LoadBalancer.id)
        .outerjoin(m.Flavor, m.Flavor.id == m.LoadBalancer.flavor_id)
        .outerjoin(m.FlavorProfile, m.FlavorProfile.id == m.Flavor.flavor_profile_id)
        .where(m.AmphoraCluster.cluster_type == "L3_BGP", m.LoadBalancer.provisioning_status != "DELETED")
    ).all()
    return sorted(lb_id for lb_id, data in rows if _speaker_of(data or "{}", default_id) == speaker_id
                  or (data is None and default_id == speaker_id))


def flavor_profiles_using(session: Session, speaker_id: str) -> list[str]:
    rows = session.execute(select(m.FlavorProfile.id, m.FlavorProfile.flavor_data)).all()
    return sorted(pid for pid, data in rows if _speaker_of(data, "") == speaker_id)


def require_unused(session: Session, speaker_id: str, default_id: str, what: str) -> None:
    users = load_balancers_using(session, speaker_id, default_id)
    profiles = flavor_profiles_using(session, speaker_id)
    if speaker_id == default_id:
        raise Conflict(f"{what} is in use: BGP speaker {speaker_id} is the configured default speaker.")
    if users or profiles:
        named = [f"load balancer {u}" for u in users[:5]] + [f"flavor profile {p}" for p in profiles[:5]]
        raise Conflict(f"{what} is in use by {', '.join(named)}.")


def reconfigure_users(session: Session, speaker_id: str, default_id: str) -> list[str]:
    """Take every load balancer using the speaker for an update (409 if one is busy); their amphorae
    get the new sessions on the reconciler's next pass."""
    users = load_balancers_using(session, speaker_id, default_id)
    for lb_id in users:
        lock_load_balancer(session, lb_id)
    return users
