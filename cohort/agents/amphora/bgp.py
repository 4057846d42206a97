"""The amphora's BGP speaker: BIRD 2 in the amphora's jail, announcing the VIPs this amphora serves.

Why BIRD: one process of about 3 MB with BFD, MD5 and GTSM (``ttl security``), and a
reconfiguration that restarts only the protocols whose configuration changed, so a VIP added
or withdrawn never disturbs a session (FRR costs about 34 MB in three daemons; GoBGP and
ExaBGP have no BFD). BIRD runs as the jail's user with ``net_admin`` only (it marks its BGP
and BFD packets with a socket priority), its files under ``/bgp`` of the jail.

The controller sets the speaker (``put_speaker``) and, per VIP, whether it should be announced
(``set_vip``). A VIP is announced only while it is wanted *and* the HAProxy of its load
balancer runs: a watchdog thread holds a pidfd of each announcing load balancer's HAProxy master
and of BIRD, and sleeps in ``poll`` until one of them exits (then it withdraws that VIP within
milliseconds, before anything else notices) or ``RECHECK_INTERVAL`` passes. It costs a capped
amphora nothing while all is well, where a 10 Hz poll of ``/proc`` cost a 0.05-CPU amphora a tenth
of its CPU. What the agent was told is kept
in ``<state>/bgp.json`` (outside the jail: it holds the MD5 passwords), so a restarted agent
renders the same configuration and adopts the running BIRD.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from cohort import validation
from cohort.agents.amphora import bird_config
from cohort.agents.amphora.second_chance import Cluster, SecondChance
from cohort.agents.common.exitwatch import ExitWatch
from cohort.agents.common.files import atomic_write, short_dir
from cohort.agents.common.jail import Jail
from cohort.agents.common.proc import cmdline, pid_alive, read_pid, run

LOG = logging.getLogger(__name__)
BIRD = "bird"
CAPABILITIES = ("net_admin",)
# Deaths wake the watchdog at once (pidfds), and so does a status that finds a session up while the
# routers' MACs are still unknown; this slow tick only adopts processes started behind its back and
# looks again for MACs that changed. At 1 s its work was most of what an L3 agent costs beyond an L2
# one (0.002 of a 0.05-CPU amphora's CPU, measured in the active-active benchmark).
RECHECK_INTERVAL = 5.0
# How often the watchdog looks while something it waits for has no event to wake it: routers' MACs
# still unknown, or a VIP wanted while its HAProxy is not (yet) found serving. A HAProxy the supervisor
# started again is not always found by the wake-up that follows (its master writes its pid file
# after the launcher returns): in the chaos benchmark its VIP came back only at the slow tick, 5.1 s
# after it was withdrawn.
MAC_POLL = 0.2
# Heartbeats reuse a status this young: asking BIRD twice a second cost a capped amphora more than
# BFD itself. Any change the controller makes, and every exit the watchdog sees, drops it at once.
STATUS_MAX_AGE = 2.0
_REPLY_END = re.compile(r"^(\d{4}) ")


def watch_interval(speaker: bool, macs_missing: bool, vips: dict[str, dict[str, Any]],
                   applied: dict[str, bool] | None) -> float:
    """The watchdog's sleep: MAC_POLL while it waits for something no event announces (a router's MAC,
    a wanted VIP held back because its HAProxy is not found serving), else RECHECK_INTERVAL."""
    if not speaker:
        return RECHECK_INTERVAL
    held_back = any(rec.get("announce") and not (applied or {}).get(vip) for vip, rec in vips.items())
    return MAC_POLL if macs_missing or held_back else RECHECK_INTERVAL


class BirdError(RuntimeError):
    """BIRD refused a command or its configuration; the message is BIRD's."""


def bird_command(socket_path: str, command: str, timeout: float = 5.0) -> list[tuple[str, str]]:
    """Run one command on BIRD's control socket; (code, text) per reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        reader = sock.makefile("r", encoding="utf-8", errors="replace")
        reader.readline()  # "0001 BIRD x.y ready."
        sock.sendall(command.encode() + b"\n")
        lines: list[tuple[str, str]] = []
        code = ""
        for raw in reader:
            line = raw.rstrip("\n")
            if line.startswith(" "):
                lines.append((code, line[1:]))
                continue
            code, text = line[:4], line[5:]
            lines.append((code, text))
            if _REPLY_END.match(line):
                break
        return lines


class BgpManager:
    def __init__(self, jail: Jail, record: Path, serving: Callable[[str], bool],
                 master_pid: Callable[[str], int | None] | None = None,
                 second_chance: SecondChance | None = None) -> None:
        """``serving(lb_id)``: whether the load balancer's HAProxy runs; ``master_pid(lb_id)``: its
        master's pid, watched through a pidfd (without it the watchdog looks every second);
        ``second_chance``: the agent's one owner of that table, which this manager gives its VIPs."""
        self.jail = jail
        jail.prepare()
        real = jail.private_dir("bgp")
        self.dir = short_dir(real, len("/bird.ctl"))
        self.inner_dir = jail.inside(real)
        self.config_path = self.dir / "bird.conf"
        self.ctl = str(self.dir / "bird.ctl")
        self._pid_file = self.dir / "bird.pid"
        self._record = record
        self._serving = serving
        self._master_pid = master_pid
        self._exits = ExitWatch()
        self._status: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.RLock()
        self._speaker_body: dict[str, Any] | None = None
        self._vips: dict[str, dict[str, Any]] = {}  # vip -> {"lb_id", "announce"}
        self._applied: dict[str, bool] | None = None
        self.second_chance = second_chance if second_chance is not None else SecondChance()
        self._macs_checked = 0.0
        self._macs_missing = True  # some router's MAC is not resolved yet: look every MAC_POLL
        self._router_macs: tuple[str, ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._load()

    # -- what the controller said -----------------------------------------------------------------
    def _load(self) -> None:
        try:
            data = json.loads(self._record.read_text())
        except (OSError, ValueError):
            return
        if isinstance(data, dict):
            self._speaker_body = data.get("speaker")
            vips = data.get("vips")
            self._vips = vips if isinstance(vips, dict) else {}

    def _save(self) -> None:
        atomic_write(self._record, json.dumps({"speaker": self._speaker_body, "vips": self._vips}), mode=0o600)

    def put_speaker(self, body: Any) -> bool:
        """Set the speaker and its peers (ValueError on bad input); returns whether it changed."""
        bird_config.parse_speaker(body)
        with self._lock:
            if body == self._speaker_body:
                return False
            self._speaker_body = body
            self._save()
            self._apply(force=True)
        self.wake()
        return True

    def set_vip(self, vip: str, lb_id: str, announce: bool, peers: list[str] | None = None) -> None:
        """``peers``: the front-end addresses of the other amphorae of the cluster (the second chance)."""
        address = validation.canonical_ip(vip, "VIP")
        others = sorted({validation.canonical_ip(p, "peer address") for p in peers or []})
        with self._lock:
            self._vips[address] = {"lb_id": lb_id, "announce": bool(announce), "peers": others}
            self._save()
            self._apply()
        self.wake()

    def remove_vip(self, vip: str) -> None:
        with self._lock:
            self._vips.pop(vip, None)
            self._save()
            self._apply()

    def withdraw_lb(self, lb_id: str) -> None:
        """Stop announcing the VIPs of ``lb_id`` (a drain or a stop): withdrawn before anything else."""
        with self._lock:
            for rec in self._vips.values():
                if rec.get("lb_id") == lb_id:
                    rec["announce"] = False
            self._save()
            self._apply()

    def remove_lb(self, lb_id: str) -> None:
        with self._lock:
            for vip in [v for v, rec in self._vips.items() if rec.get("lb_id") == lb_id]:
                self._vips.pop(vip)
            self._save()
            self._apply()

    # -- BIRD -------------------------------------------------------------------------------------
    def _effective(self) -> dict[str, bool]:
        # Not before a router's MAC is known: flows a router moves here when the route appears would
        # otherwise meet no second chance (nothing tells its packets from a peer's) and be reset. In
        # the chaos benchmark a replacement announced before it had looked, and 4 connections held by
        # other amphorae broke.
        ready = bool(self._router_macs)
        return {vip: ready and bool(rec.get("announce")) and self._serving(str(rec.get("lb_id", "")))
                for vip, rec in self._vips.items()}

    def pid(self) -> int | None:
        pid = read_pid(str(self._pid_file))
        if pid is None or not pid_alive(pid) or not self.jail.holds(pid):
            return None
        args = cmdline(pid)
        return pid if args and args[0].endswith("bird") else None

    def running(self) -> bool:
        return self.pid() is not None

    def _apply(self, force: bool = False) -> None:
        """Render what should be announced now; reconfigure BIRD when that changed."""
        if self._speaker_body is None:
            return
        speaker = bird_config.parse_speaker(self._speaker_body)
        # Routers' MACs appear once their sessions resolve them: looked for until every one is known,
        # then now and then. The second chance needs them before the VIP is announced (_effective).
        if self._macs_missing or time.monotonic() - self._macs_checked > RECHECK_INTERVAL:
            self._apply_second_chance(speaker)
        effective = self._effective()
        if not force and effective == self._applied and self.running():
            return
        text = bird_config.render(speaker, effective, f"{self.inner_dir}/bird.log")
        candidate = self.dir / "bird.conf.new"
        candidate.write_text(text)
        self.jail.give(candidate)
        os.replace(candidate, self.config_path)
        if self.running():
            reply = bird_command(self.ctl, "configure")
            if not reply or reply[-1][0][:1] in ("8", "9"):
                raise BirdError("; ".join(text for _, text in reply))
        else:
            self._start()
        self._apply_second_chance(speaker)
        withdrawn = [vip for vip, on in (self._applied or {}).items() if on and not effective.get(vip)]
        if withdrawn:
            LOG.warning("withdrew %s", ", ".join(withdrawn))
        self._applied = effective
        self._status = None

    def _apply_second_chance(self, speaker: bird_config.Speaker) -> None:
        """Forward packets of flows this amphora does not own to its cluster peers (second_chance)."""
        macs = tuple(router_macs([peer.peer_ip for peer in speaker.peers]))
        self._macs_checked = time.monotonic()
        self._macs_missing = len(macs) < len(speaker.peers)
        self._router_macs = macs
        self.second_chance.set_routed({
            vip: Cluster(peers=tuple(rec.get("peers") or ()), interface=speaker.interface, routers=macs)
            for vip, rec in self._vips.items()})

    def _start(self) -> None:
        run(self.jail.command([BIRD, "-c", f"{self.inner_dir}/bird.conf", "-s", f"{self.inner_dir}/bird.ctl",
                               "-P", f"{self.inner_dir}/bird.pid"], caps=CAPABILITIES))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                bird_command(self.ctl, "show status")
                return
            except OSError:
                time.sleep(0.02)
        raise BirdError("BIRD did not open its control socket")

    def stop(self) -> None:
        with self._lock:
            pid = self.pid()
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 5
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
            self._applied = None

    # -- watchdog ---------------------------------------------------------------------------------
    def resume(self) -> None:
        """Adopt a running BIRD (or start it) and watch HAProxy from now on."""
        with self._lock:
            if self._speaker_body is not None:
                try:
                    self._apply(force=True)
                except (OSError, BirdError, ValueError):
                    LOG.exception("could not resume the BGP speaker")
        self._thread = threading.Thread(target=self._watch, name="bgp-watchdog", daemon=True)
        self._thread.start()

    def recheck(self) -> None:
        """Apply what should be announced now, in the caller's thread: the supervisor withdraws the VIP
        of a dead HAProxy before it starts it again, though the watchdog, busy, has not looked yet (the
        restart would otherwise hide the death, and the route would have stayed while nothing listened)."""
        try:
            with self._lock:
                self._apply()
        except (OSError, BirdError, ValueError):
            LOG.exception("could not apply the announcements")  # the watchdog tries again

    def wake(self) -> None:
        """Have the watchdog look again now (a HAProxy was started or a VIP set): new pids to watch."""
        self._status = None
        self._exits.wake()

    def _watched_pids(self) -> set[int]:
        pids = set()
        if self._master_pid is not None:
            for lb_id in {str(rec.get("lb_id", "")) for rec in self._vips.values() if rec.get("announce")}:
                pid = self._master_pid(lb_id)
                if pid is not None:
                    pids.add(pid)
        bird = self.pid()
        if bird is not None:
            pids.add(bird)
        return pids

    def _watch(self) -> None:
        watched: set[int] = set()
        while not self._stop.is_set():
            try:
                with self._lock:
                    self._apply()
                    watched = self._watched_pids()
            except Exception:  # noqa: BLE001 - the watchdog must outlive any one failure
                LOG.exception("BGP watchdog")
            interval = watch_interval(self._speaker_body is not None, self._macs_missing, self._vips, self._applied)
            if self._exits.wait(watched, interval):
                self._status = None
        self._exits.close()

    def close(self) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=2)

    # -- status -----------------------------------------------------------------------------------
    def status(self, max_age: float = 0.0) -> dict[str, Any]:
        """Sessions per peer and the VIPs announced, as BIRD reports them (at most ``max_age`` old)."""
        cached = self._status
        if cached is not None and time.monotonic() - cached[0] <= max_age:
            return cached[1]
        result = self._fresh_status()
        self._status = (time.monotonic(), result)
        return result

    def _fresh_status(self) -> dict[str, Any]:
        with self._lock:
            speaker = bird_config.parse_speaker(self._speaker_body) if self._speaker_body is not None else None
            applied = dict(self._applied or {})
            wanted = sorted(vip for vip, rec in self._vips.items() if rec.get("announce"))
        result: dict[str, Any] = {"configured": speaker is not None, "running": self.running(), "sessions": {},
                                  "announced": [], "wanted": wanted, "checked_at": time.monotonic()}
        if speaker is None or not result["running"]:
            return result
        try:
            protocols = bird_command(self.ctl, "show protocols")
        except OSError:
            return result
        states: dict[str, tuple[str, str, float | None]] = {}
        for _code, text in protocols:
            fields = text.split()
            if len(fields) >= 5 and fields[1] in ("BGP", "Static"):
                # "Since" is a date and a time (``timeformat protocol iso long ms``), or a time today.
                info_at = 6 if "-" in fields[4] and len(fields) > 5 and ":" in fields[5] else 5
                states[fields[0]] = (fields[3], " ".join(fields[info_at:]), _since(fields[4:info_at]))
        now = time.time()
        for peer in speaker.peers:
            state, info, since = states.get(peer.protocol, ("down", "", None))
            session: dict[str, Any] = {"state": info.split()[0] if info else state, "info": info}
            if session["state"] != "Established" and since is not None:
                session["down_for"] = round(max(0.0, now - since), 3)
            result["sessions"][peer.peer_ip] = session
        established = any(s["state"] == "Established" for s in result["sessions"].values())
        if established and self._macs_missing:
            self.wake()  # a router has just been resolved: the second chance needs its MAC now
        result["announced"] = sorted(
            vip for vip, on in applied.items()
            if on and established and states.get(bird_config.vip_protocol(vip), ("",))[0] == "up")
        pid = self.pid()
        if pid is not None:
            result["rss_kb"] = _rss_kb(pid)
        return result


def _since(fields: list[str]) -> float | None:
    """BIRD's "Since" column (its local time, to the millisecond) as a Unix time; None if unreadable."""
    try:
        return datetime.strptime(" ".join(fields), "%Y-%m-%d %H:%M:%S.%f").timestamp()
    except ValueError:
        return None


def router_macs(addresses: list[str], arp_table: str = "/proc/net/arp") -> list[str]:
    """The MACs of the routers (BGP peers) this amphora has resolved."""
    try:
        rows = Path(arp_table).read_text().splitlines()[1:]
    except OSError:
        return []
    wanted = set(addresses)
    found = []
    for row in rows:
        fields = row.split()
        # IP address, HW type, flags (0x2: complete), HW address, mask, device
        if len(fields) >= 4 and fields[0] in wanted and fields[2] != "0x0" and fields[3] != "00:00:00:00:00:00":
            found.append(fields[3])
    return sorted(set(found))


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
