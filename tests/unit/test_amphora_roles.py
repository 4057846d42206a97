"""ACTIVE_STANDBY roles across a failover: the survivor of a dead MASTER becomes the MASTER."""

from __future__ import annotations

from cohort import datamodel as d
from cohort.controller.amphorae import promote_survivor, wanted_slots
from cohort.db import models as m

STANDBY = wanted_slots(d.Topology(name="ACTIVE_STANDBY"))


def amphora(role: str, priority: int) -> m.Amphora:
    return m.Amphora(role=role, vrrp_priority=priority, status="ALLOCATED")


def test_the_backup_of_a_replaced_master_becomes_the_master() -> None:
    backup = amphora("BACKUP", 90)
    promote_survivor([backup], STANDBY)
    assert (backup.role, backup.vrrp_priority) == ("MASTER", 100)


def test_a_working_master_keeps_its_role_and_the_backup_stays() -> None:
    master, backup = amphora("MASTER", 100), amphora("BACKUP", 90)
    promote_survivor([master], STANDBY)
    assert (master.role, master.vrrp_priority) == ("MASTER", 100)
    promote_survivor([master, backup], STANDBY)
    assert (backup.role, backup.vrrp_priority) == ("BACKUP", 90)


def test_nothing_to_promote_when_both_are_gone_or_the_topology_has_no_roles() -> None:
    promote_survivor([], STANDBY)
    cluster = [amphora("IN_CLUSTER", 0)]
    promote_survivor(cluster, wanted_slots(d.Topology(name="ACTIVE_ACTIVE", amp_cluster_size=2)))
    assert cluster[0].role == "IN_CLUSTER"
