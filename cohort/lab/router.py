"""The lab's gateway as a real top-of-rack router: FRR (zebra, bgpd, bfdd) in the gateway namespace.

It peers with every amphora speaker on the front-end subnet (dynamic neighbours from a listen
range, so amphorae come and go without touching it), accepts only host routes of that subnet,
installs the VIP routes of several amphorae as one multipath route (``maximum-paths``) hashed on
ports (``fib_multipath_hash_policy=1``), and runs BFD with the intervals each speaker asks for.
Its AS (64512 by default), an optional MD5 password and GTSM (``ttl-security hops 1``) are lab
settings kept in the lab state, so a rebuilt lab comes back the same.

By default the kernel gets FRR's plain hash-threshold multipath, which moves flows between next
hops when their number changes (what most fabrics do). With ``resilient`` the router behaves like
a fabric with resilient hashing: bgpd installs nothing (``-n``) and :mod:`cohort.lab.fib` programs
each VIP as a resilient next-hop group from what bgpd has learnt.

FRR drops to its own user (``frr``), so its files live under ``/run/cohort-lab/<prefix>``, owned
by that user; ``Lab.down`` stops the daemons by their pid files and removes the directory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cohort import netns
from cohort.lab.errors import LabError
from cohort.netplan import PUBLIC_CIDR, PUBLIC_GATEWAY

if TYPE_CHECKING:
    from cohort.lab.core import Lab

FRR_DIR = Path("/usr/lib/frr")
RUN_ROOT = Path("/run/cohort-lab")
DAEMONS = ("zebra", "bfdd", "bgpd")
DEFAULT_ASN = 64512
BFD_PROFILE = "amphorae"
BFD_MIN_MS = 50
PASSWORD_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:+=/@%")


@dataclass(frozen=True)
class RouterSettings:
    asn: int = DEFAULT_ASN
    password: str | None = None
    ttl_security: bool = True
    resilient: bool = False

    def check(self) -> RouterSettings:
        if not 1 <= self.asn <= 2**32 - 1:
            raise LabError(f"router AS {self.asn} is out of range")
        if self.password is not None and (not 1 <= len(self.password) <= 80 or set(self.password) - PASSWORD_CHARS):
            raise LabError("router password: 1-80 of letters, digits and -_.:+=/@%")
        return self


def bfdd_config() -> str:
    """The router is willing to go as fast as BFD_MIN_MS: each session then runs at what the amphora
    asks (a session's interval is the slower of one side's transmit and the other's receive)."""
    return "\n".join(["bfd", f" profile {BFD_PROFILE}", f"  receive-interval {BFD_MIN_MS}",
                      f"  transmit-interval {BFD_MIN_MS}", "  detect-multiplier 3", " exit", "exit", ""])


def bgpd_config(settings: RouterSettings) -> str:
    lines = [
        "hostname cohort-lab-router",
        f"router bgp {settings.asn}",
        f" bgp router-id {PUBLIC_GATEWAY}",
        # When each session went up and down, in bgpd.log: a false failover under load once left
        # nothing there to say when the session had dropped.
        " bgp log-neighbor-changes",
        " no bgp ebgp-requires-policy",
        " no bgp default ipv4-unicast",
        " bgp bestpath as-path multipath-relax",
        " neighbor AMPHORAE peer-group",
        " neighbor AMPHORAE remote-as external",
        " neighbor AMPHORAE bfd",
        f" neighbor AMPHORAE bfd profile {BFD_PROFILE}",
        " neighbor AMPHORAE timers connect 2",
    ]
    if settings.password:
        lines.append(f" neighbor AMPHORAE password {settings.password}")
    if settings.ttl_security:
        lines.append(" neighbor AMPHORAE ttl-security hops 1")
    lines += [
        f" bgp listen range {PUBLIC_CIDR} peer-group AMPHORAE",
        " address-family ipv4 unicast",
        "  neighbor AMPHORAE activate",
        "  maximum-paths 64",
        "  neighbor AMPHORAE route-map AMPHORA-VIPS in",
        "  neighbor AMPHORAE route-map NOTHING out",
        " exit-address-family",
        "exit",
        f"ip prefix-list AMPHORA-VIPS seq 10 permit {PUBLIC_CIDR} ge 32",
        "route-map AMPHORA-VIPS permit 10",
        " match ip address prefix-list AMPHORA-VIPS",
        "exit",
        "route-map NOTHING deny 10",
        "exit",
    ]
    return "\n".join(lines) + "\n"


class LabRouter:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.dir = RUN_ROOT / lab.prefix

    # -- settings ---------------------------------------------------------------------------------
    def settings(self) -> RouterSettings:
        data = self.lab.snapshot().get("router") or {}
        return RouterSettings(**{k: v for k, v in data.items() if k in RouterSettings.__dataclass_fields__})

    def configure(self, settings: RouterSettings) -> None:
        """Record the router's settings; a running router is restarted with them."""
        settings.check()
        if settings == self.settings() and self.running():
            return
        with self.lab.transaction() as st:
            st["router"] = asdict(settings)
        if self.running():
            self.stop()
            self.start()

    # -- processes --------------------------------------------------------------------------------
    def _pid(self, daemon: str) -> int | None:
        try:
            pid = int((self.dir / f"{daemon}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def running(self) -> bool:
        return all(self._pid(d) is not None for d in DAEMONS)

    def start(self) -> None:
        if not (FRR_DIR / "bgpd").exists():
            raise LabError("FRR is not installed (apt-get install frr)")
        settings = self.settings().check()
        if self.running():
            return
        self.stop()
        ns = self.lab.gw_ns
        netns.sysctl(ns, "net.ipv4.fib_multipath_hash_policy", 1)
        # Modes are set explicitly: Cohort's processes keep a private umask, and FRR runs as frr.
        RUN_ROOT.mkdir(exist_ok=True)
        RUN_ROOT.chmod(0o755)
        self.dir.mkdir(exist_ok=True)
        self.dir.chmod(0o750)
        shutil.chown(self.dir, "frr", "frr")
        configs = {"zebra": "hostname cohort-lab-router\n", "bfdd": bfdd_config(), "bgpd": bgpd_config(settings)}
        for daemon, text in configs.items():
            path = self.dir / f"{daemon}.conf"
            path.write_text(text)
            shutil.chown(path, "frr", "frr")
        for daemon in DAEMONS:
            command = [str(FRR_DIR / daemon), "-d", "-f", str(self.dir / f"{daemon}.conf"),
                       "-i", str(self.dir / f"{daemon}.pid"), "-z", str(self.dir / "zserv.api"),
                       "--vty_socket", str(self.dir), "-P", "0", "--log", f"file:{self.dir / daemon}.log"]
            if daemon == "bfdd":
                command += ["--bfdctl", str(self.dir / "bfdd.sock")]
            if daemon == "bgpd" and settings.resilient:
                command.append("-n")  # the lab's FIB programmer installs resilient groups instead
            netns.run_in(ns, command)
        deadline = time.monotonic() + 10
        while not self.running():
            if time.monotonic() > deadline:
                raise LabError(f"FRR did not start in {ns}; see {self.dir}/*.log")
            time.sleep(0.05)
        if settings.resilient:
            pid, _ = netns.spawn(ns, [sys.executable, "-m", "cohort.lab.fib", "--vty-dir", str(self.dir)],
                                 self.dir / "fib.log")
            (self.dir / "fib.pid").write_text(f"{pid}\n")

    def stop(self) -> None:
        pids = [pid for pid in (self._pid(d) for d in (*DAEMONS, "fib")) if pid is not None]
        netns.kill_pids(set(pids))
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            RUN_ROOT.rmdir()  # only when no other lab uses it

    # -- what it sees -----------------------------------------------------------------------------
    def vtysh(self, command: str) -> str:
        done = subprocess.run(["vtysh", "--vty_socket", str(self.dir), "-c", command], capture_output=True,
                              text=True, timeout=10, check=False)
        return done.stdout

    def neighbors(self) -> dict[str, str]:
        """Peer address -> BGP state (``Established``, ``Active``, ...)."""
        try:
            data = json.loads(self.vtysh("show bgp ipv4 unicast summary json") or "{}")
        except ValueError:
            return {}
        return {peer: str(info.get("state", "")) for peer, info in data.get("peers", {}).items()}

    def bfd_sessions(self) -> dict[str, str]:
        """Peer address -> BFD session status (``up``, ``down``, ``init``)."""
        try:
            data = json.loads(self.vtysh("show bfd peers json") or "[]")
        except ValueError:
            return {}
        return {str(s.get("peer", "")): str(s.get("status", "")) for s in data if isinstance(s, dict)}

    def routes(self) -> dict[str, list[str]]:
        """VIP -> the next hops the router's kernel has installed for it (what traffic really takes)."""
        done = netns.run_in(self.lab.gw_ns, ["ip", "-j", "-4", "route", "show", "proto", "bgp"], check=False)
        result: dict[str, list[str]] = {}
        for route in json.loads(done.stdout or "[]"):
            dst = str(route.get("dst", ""))
            hops = [str(h["gateway"]) for h in route.get("nexthops", []) if "gateway" in h]
            if "gateway" in route:
                hops.append(str(route["gateway"]))
            if dst:
                result[str(ipaddress.ip_network(dst, strict=False).network_address)] = sorted(hops)
        return result

    def status(self) -> dict[str, Any]:
        settings = self.settings()
        return {"asn": settings.asn, "address": PUBLIC_GATEWAY, "running": self.running(),
                "resilient": settings.resilient, "md5": settings.password is not None,
                "neighbors": self.neighbors() if self.running() else {}, "routes": self.routes()}

