"""Run Octavia's upstream API test suite (octavia-tempest-plugin, ``tests.api.v2``) against Cohort.

``make test-tempest``: a real Keystone (tests/keystone/lab.py) and Cohort on noop drivers with
``auth_strategy = "keystone"``, registered in Keystone's catalogue as ``load-balancer``; tempest
and the plugin, from PyPI in their own virtualenv (``.venv-tempest``), with dynamic credentials
(tempest makes its own projects and users with Keystone's default roles), configured as
upstream's own noop API job configures them. The summary line of ``tempest run`` is printed
last; the exit status is tempest's. ``--regex`` narrows the run, ``--concurrency`` sets workers;
the tests of ``known_failures.txt`` (each with its cause) are left out unless ``--all`` is given.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.keystone.lab import ADMIN_PASSWORD, KeystoneLab
from tests.support import running_cohort

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-tempest"
SUITE = r"^octavia_tempest_plugin\.tests\.api\.v2"
KNOWN_FAILURES = Path(__file__).with_name("known_failures.txt")
# What Cohort does not implement, told to the suite as upstream's own configuration options tell it.
# Listener and pool TLS tests store their certificates with Barbican's API, which Cohort answers on
# /v1 (registered as the key-manager service).
TEMPEST_CONF = """\
[DEFAULT]
log_file = {workdir}/tempest.log

[auth]
use_dynamic_credentials = true
admin_username = admin
admin_password = {admin_password}
admin_project_name = admin
admin_domain_name = Default
create_isolated_networks = false

[identity]
uri_v3 = {keystone}
auth_version = v3
region = RegionOne
v3_endpoint_type = public

[identity-feature-enabled]
api_v2 = false

[service_available]
load_balancer = true
neutron = false
nova = false
glance = false
cinder = false
swift = false
barbican = true

[network]
project_networks_reachable = true

[load_balancer]
test_with_noop = true
test_with_ipv6 = true
RBAC_test_type = keystone_default_roles
provider = amphora
enabled_provider_drivers = amphora:The Octavia Amphora driver.,octavia:Deprecated alias of the Octavia Amphora driver.
build_interval = 0.5
check_interval = 0.5
lb_build_interval = 0.5
check_timeout = 120
lb_build_timeout = 300
build_timeout = 120
availability_zone = bogus-az-1
availability_zone2 = bogus-az-2
availability_zone3 = bogus-az-3

[loadbalancer-feature-enabled]
not_implemented_is_error = true
l4_protocol = TCP
terminated_tls_enabled = true
log_offload_enabled = false
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regex", default=SUITE)
    parser.add_argument("--all", action="store_true", help="also run the known failures (known_failures.txt)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if not (VENV / "bin" / "tempest").exists():
        print(f"{VENV} has no tempest: run `make test-tempest`, which builds it", file=sys.stderr)
        return 2
    # A TERM (CI's timeout, a developer's kill) still stops Keystone and Cohort on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cohort-tempest-"))
    workdir.mkdir(parents=True, exist_ok=True)
    keystone = KeystoneLab(workdir / "keystone").start()
    try:
        with running_cohort(workdir / "cohort", drivers="noop", auth_strategy="keystone",
                            keystone_auth_url=keystone.url) as (_, url):
            keystone.register_service("load-balancer", "octavia", url)
            keystone.register_service("key-manager", "barbican", url + "/v1")
            # A workspace of its own name: tempest refuses a name already in its registry.
            subprocess.run([str(VENV / "bin" / "tempest"), "init", "--name", f"cohort-{workdir.name}-{os.getpid()}",
                            str(workdir / "tempest")], check=True, capture_output=True)
            conf = workdir / "tempest" / "etc" / "tempest.conf"
            conf.write_text(TEMPEST_CONF.format(workdir=workdir, keystone=keystone.url,
                                                admin_password=ADMIN_PASSWORD))
            print(f"tempest workspace {workdir / 'tempest'}; Cohort {url}; Keystone {keystone.url}", flush=True)
            env = {**os.environ, "TEMPEST_CONFIG_DIR": str(conf.parent)}
            command = [str(VENV / "bin" / "tempest"), "run", "--regex", args.regex,
                       "--concurrency", str(args.concurrency)]
            if not args.all:
                command += ["--exclude-list", str(KNOWN_FAILURES)]
            done = subprocess.run(command, cwd=workdir / "tempest", env=env)
            return done.returncode
    finally:
        keystone.stop()


if __name__ == "__main__":
    sys.exit(main())
