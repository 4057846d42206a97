"""Octavia's "Deploy a TLS-terminated HTTPS load balancer" cookbook, word for word, on real amphorae.

The certificate is made with ``openssl`` and stored with ``openstack secret store`` (a base64
PKCS12, as the cookbook stores it), the ACL is set with ``openstack acl user add``, and the load
balancer, its TERMINATED_HTTPS listener, pool and members with ``openstack loadbalancer``;
Cohort runs with the local drivers (amphorae in network namespaces, real HAProxy). An HTTPS
request from the lab's client namespace then gets the member's answer, and the certificate the
VIP serves is the one stored. The container variant of the cookbook (PEM secrets in a
certificate container) serves a second listener. The lab is torn down, also on failure.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cohort.lab import Lab
from tests.support import local_cohort, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

OCTAVIA_USER = "8d8e4f1a2b3c4d5e6f708192a3b4c5d6"  # the ACL's user; Cohort needs none to read its secrets


class Shell:
    """Bash with the checkout's ``openstack`` CLI, Cohort's key-manager endpoint or its root."""

    def __init__(self, base: str, env: dict[str, str], cwd: Path) -> None:
        self.base, self.env, self.cwd = base, env, cwd

    def __call__(self, script: str, key_manager: bool = False) -> str:
        env = {**self.env, "OS_AUTH_TYPE": "none", "OS_ENDPOINT": f"{self.base}/v1" if key_manager else self.base}
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=self.cwd,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        return done.stdout


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, openstack_bin: str,
          client_env: dict[str, str]) -> Iterator[tuple[Shell, Lab, Path]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    files: Path = tmp_path_factory.mktemp("tls-cookbook")
    env = {**client_env, "PATH": f"{Path(openstack_bin).parent}:{client_env['PATH']}"}
    with local_cohort(tmp_path_factory.mktemp("cohort"), heartbeat_stale_after=3.0) as (_cohort, base, lab):
        yield Shell(base, env, files), lab, files


def _served_certificate(lab: Lab, vip: str, port: int, files: Path) -> str:
    done = lab.exec_client(["sh", "-c", f"openssl s_client -connect {vip}:{port} -servername www.example.com "
                                        f"</dev/null 2>/dev/null | openssl x509 -outform PEM"], timeout=20)
    return done.stdout.strip()


def test_tls_terminated_https_cookbook(local: tuple[Shell, Lab, Path]) -> None:
    sh, lab, files = local
    member = lab.add_member("tls1")
    try:
        # The cookbook's certificate, made with openssl, stored as a base64 PKCS12 with an ACL.
        sh("""
openssl req -x509 -newkey rsa:2048 -nodes -keyout server.key -out server.crt -days 2 \
  -subj "/CN=www.example.com" 2>/dev/null
openssl pkcs12 -export -inkey server.key -in server.crt -passout pass: -out server.p12
""")
        sh(f"""
openstack secret store --name='tls_secret1' -t 'application/octet-stream' -e 'base64' \
  --payload="$(base64 < server.p12)"
openstack acl user add -u {OCTAVIA_USER} $(openstack secret list | awk '/ tls_secret1 / {{print $2}}')
openstack secret list | awk '/ tls_secret1 / {{print $2}}' > secret_ref
openstack secret store --name='certificate1' -t 'text/plain' --payload="$(cat server.crt)"
openstack secret store --name='private_key1' -t 'text/plain' --payload="$(cat server.key)"
openstack secret container create --name='tls_container1' --type='certificate' \
  --secret="certificate=$(openstack secret list | awk '/ certificate1 / {{print $2}}')" \
  --secret="private_key=$(openstack secret list | awk '/ private_key1 / {{print $2}}')"
openstack secret container list | awk '/ tls_container1 / {{print $2}}' > container_ref
""", key_manager=True)
        secret_ref = (files / "secret_ref").read_text().strip()
        container_ref = (files / "container_ref").read_text().strip()
        assert "/v1/secrets/" in secret_ref and "/v1/containers/" in container_ref

        sh(f"""
openstack loadbalancer create --name lb1 --vip-subnet-id public-subnet --wait
openstack loadbalancer listener create --protocol-port 443 --protocol TERMINATED_HTTPS --name listener1 \
  --default-tls-container={secret_ref} --wait lb1
openstack loadbalancer pool create --name pool1 --lb-algorithm ROUND_ROBIN --listener listener1 \
  --protocol HTTP --wait
openstack loadbalancer member create --subnet-id private-subnet --address {member} --protocol-port 80 \
  --wait pool1
openstack loadbalancer listener create --protocol-port 8443 --protocol TERMINATED_HTTPS --name listener2 \
  --default-tls-container={container_ref} --default-pool pool1 --wait lb1
""")
        vip = sh("openstack loadbalancer show lb1 -f value -c vip_address").strip()
        (files / "ca.pem").write_bytes((files / "server.crt").read_bytes())
        lab_ca = str(files / "ca.pem")

        def https(port: int) -> tuple[int, str]:
            done = lab.exec_client(["curl", "-s", "--max-time", "3", "--cacert", lab_ca, "--resolve",
                                    f"www.example.com:{port}:{vip}", f"https://www.example.com:{port}/"], timeout=10)
            return done.returncode, done.stdout.strip()

        # curl verifies the server against the stored certificate (as its only CA) and its name.
        assert wait_for(lambda: https(443) == (0, "tls1"), timeout=60, interval=1.0)
        stored = (files / "server.crt").read_text().strip()
        assert _served_certificate(lab, vip, 443, files) == stored
        assert wait_for(lambda: https(8443) == (0, "tls1"), timeout=60, interval=1.0)
        assert _served_certificate(lab, vip, 8443, files) == stored
    finally:
        subprocess.run(["bash", "-c", "openstack loadbalancer delete --cascade --wait lb1"], env={
            **sh.env, "OS_AUTH_TYPE": "none", "OS_ENDPOINT": sh.base}, capture_output=True, timeout=300)
        lab.remove_member("tls1")
    sh(f"""
openstack secret container delete {container_ref}
openstack secret delete {secret_ref}
""", key_manager=True)
